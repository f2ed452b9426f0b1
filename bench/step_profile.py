"""Where one optimizer step's work goes, per arm of ``vs_deepspeed.py``: counted, not timed.

Each arm (paratune's ``Engine``, DeepSpeed, the bare DDP loop) runs the same GPT and batches as
in ``vs_deepspeed.py`` as 2 ranks on CPU; after the warmup steps, one step as its API runs it
(``train_batch`` for paratune, forward/backward/step plus ``loss.item()`` for the others) runs
under ``torch.profiler`` and rank 0 counts its events: collectives (the ``c10d::`` calls),
host syncs (``aten::_local_scalar_dense``: ``.item()``, ``float()``), the optimizer's kernels
(fused, foreach or one op per parameter) and all ``aten::`` ops dispatched. Counts do not
depend on how busy the machine is, so they say what a noisy stopwatch cannot. Next to them,
per step and unprofiled: the process's CPU time (every thread: compute, and gloo's own
threads' reductions and socket copies; waiting costs none), its system part, and its minor
page faults (pages the kernel had to zero-fill for buffers the allocator gave back to it);
CPU time moves far less with other load on the machine than wall time does.

    PYTHONPATH=$PWD bench/.venv-deepspeed/bin/python bench/step_profile.py [--quick]

Without DeepSpeed installed its arms are left out. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import collections
import json
import resource
import statistics
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vs_deepspeed import ARMS, MODEL, NPROC, Arm, Setup

COLUMNS = {
    "collectives": lambda n: n.startswith("c10d::"),
    "host syncs": lambda n: n == "aten::_local_scalar_dense",
    "fused adamw": lambda n: n.startswith("aten::_fused_adam"),
    "foreach ops": lambda n: n.startswith("aten::_foreach_"),
    "addcdiv_": lambda n: n == "aten::addcdiv_",  # one per parameter in the for-loop AdamW
    "aten ops": lambda n: n.startswith("aten::"),
}

# per unprofiled step, on rank 0: median over the measured steps
USAGE = ("cpu ms", "system ms", "minor faults")


def _usage(before: resource.struct_rusage, after: resource.struct_rusage) -> dict[str, float]:
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return {
        "cpu ms": 1000 * (user + system),
        "system ms": 1000 * system,
        "minor faults": after.ru_minflt - before.ru_minflt,
    }


def worker(arm: Arm, setup: Setup, out: Path) -> None:
    import torch.distributed as dist
    import vs_deepspeed as vs
    from torch.profiler import ProfilerActivity, profile

    from engine.config import ModelConfig
    from engine.data import SyntheticTokens
    from engine.model import GPT
    from engine.recipe import token_cross_entropy

    model_cfg = ModelConfig(**setup.model)
    if arm.engine == "paratune":
        step, close = vs._paratune(arm, setup, model_cfg)
    else:
        dist.init_process_group("gloo")
        model = GPT(model_cfg, seed=0)
        if arm.engine == "deepspeed":
            step, close = vs._deepspeed(arm, setup, model, token_cross_entropy)
        else:
            step, close = vs._ddp(setup, model, token_cross_entropy)
    rank, world = dist.get_rank(), dist.get_world_size()
    data = SyntheticTokens(model_cfg.vocab_size, model_cfg.seq_len, 0, setup.micro_batch * world)
    counts: collections.Counter = collections.Counter()
    collectives: collections.Counter = collections.Counter()
    usage: list[dict[str, float]] = []
    n = setup.steps - setup.warmup
    # warmup, then n steps measured without the profiler (its buffers would be the faults),
    # then n steps counted under it
    for i in range(setup.steps + n):
        [batch] = data.micro_batches(i, dp_rank=rank, dp=world, micro_batch=setup.micro_batch)
        dist.barrier()
        if i < setup.warmup:
            step(batch)
        elif i < setup.steps:
            before = resource.getrusage(resource.RUSAGE_SELF)
            step(batch)
            usage.append(_usage(before, resource.getrusage(resource.RUSAGE_SELF)))
        else:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step(batch)
            for event in prof.events():
                counts.update(col for col, match in COLUMNS.items() if match(event.name))
                if event.name.startswith("c10d::"):
                    collectives[event.name.removeprefix("c10d::").rstrip("_")] += 1
    dist.barrier()
    if rank == 0:
        per_step = {k: counts[k] / n for k in COLUMNS}
        per_step |= {k: statistics.median(u[k] for u in usage) for k in USAGE}
        per_step["which"] = ", ".join(f"{k} {v / n:g}" for k, v in sorted(collectives.items()))
        out.write_text(json.dumps(per_step))
    close()
    if dist.is_initialized():
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the engine's tiny GPT")
    parser.add_argument("--arms", nargs="*", help="arm names to run, e.g. 'paratune zero2 fp32'")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        arm, setup = json.loads(args.worker[0])
        worker(Arm(**arm), Setup(**setup), Path(args.worker[1]))
        return
    from engine.launch import launch

    try:
        import deepspeed  # noqa: F401

        arms = ARMS
    except ImportError:
        arms = [a for a in ARMS if a.engine != "deepspeed"]
    arms = [a for a in arms if not args.arms or a.name in args.arms]
    setup = Setup({} if args.quick else MODEL, 2 if args.quick else 4, 6, 2)
    names = [*COLUMNS, *USAGE]
    rows = [f"| arm | {' | '.join(names)} | collectives by kind |", "|---" * (len(names) + 2) + "|"]
    with tempfile.TemporaryDirectory() as tmp:
        for arm in arms:
            out = Path(tmp) / f"{arm.engine}{arm.zero}{arm.precision}.json"
            cmd = [sys.executable, __file__, "--worker", json.dumps([asdict(arm), asdict(setup)])]
            result = launch([*cmd, str(out)], nproc=NPROC, log_dir=Path(tmp) / arm.name,
                            timeout_s=900)  # fmt: skip
            if not result.ok:
                raise SystemExit(f"{arm.name}: {result.log_paths[0].read_text()[-3000:]}")
            c = json.loads(out.read_text())
            cells = " | ".join(f"{c[k]:.4g}" for k in names)
            rows.append(f"| {arm.name} | {cells} | {c['which']} |")
            print(rows[-1], flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
