"""paratune's ``Engine`` against DeepSpeed at ZeRO 0-3, and a bare DDP loop, side by side.

Every arm trains the same model (this engine's GPT, the same seeded weights) on the same seeded
batches with the same AdamW settings and no gradient clipping, each otherwise with its
defaults but for one: paratune's ZeRO 2/3 run the whole model as one FSDP unit
(``parallel.fsdp_unit_layers=0``), the granularity DeepSpeed's default buckets give this model
(``--fsdp-unit-layers 1``: one unit per block, the engine's default). They run as 2 ranks on
CPU (gloo), timed by the same external stopwatch: a barrier, then ``perf_counter`` around one
optimizer step as its API runs it, then a barrier (so a step lasts as long as its slowest
rank). Launches are interleaved (arm order reversed every other repeat); per arm the median
step of each launch, then the median and range over launches; the ratio per ZeRO stage is
paratune's tokens/s over DeepSpeed's. DeepSpeed is not a dependency of paratune: it lives in
this benchmark's own virtual environment, which reuses the installed torch:

    python -m venv --system-site-packages bench/.venv-deepspeed
    TORCH=$(python -c 'import torch; print(torch.__version__.split("+")[0])')
    bench/.venv-deepspeed/bin/pip install "deepspeed==0.19.8" "torch==$TORCH"
    PYTHONPATH=$PWD bench/.venv-deepspeed/bin/python bench/vs_deepspeed.py --repeats 5

(pinning torch keeps pip from replacing the installed build with another). ``--quick`` runs a
tiny model for a few steps, once, to check that every arm works end to end; its timings mean
nothing. Without ``--quick`` the table goes to bench/results/vs_deepspeed.md with the command.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the ranks import the engine from this checkout

# the 5.3M-parameter GPT of the engine's model class; --quick uses the engine's tiny default
MODEL = {"n_layers": 4, "d_model": 256, "n_heads": 8, "d_ff": 1024, "vocab_size": 4096,
         "seq_len": 128}  # fmt: skip
OPTIM = {"lr": 3e-4, "betas": (0.9, 0.95), "weight_decay": 0.1}
NPROC = 2
# the commands of the docstring, printed when DeepSpeed is missing
INSTALL = "\n".join(line for line in __doc__.splitlines() if line.startswith("    "))


@dataclass(frozen=True)
class Arm:
    engine: str  # paratune | deepspeed | ddp
    zero: int
    precision: str  # fp32 | bf16

    @property
    def name(self) -> str:
        return f"{self.engine} zero{self.zero} {self.precision}"


ARMS = [
    *(Arm(e, z, "fp32") for z in range(4) for e in ("paratune", "deepspeed")),
    *(Arm(e, z, "bf16") for z in range(4) for e in ("paratune", "deepspeed")),
    Arm("ddp", 0, "fp32"),
]


@dataclass(frozen=True)
class Setup:
    model: dict
    micro_batch: int
    steps: int
    warmup: int
    # blocks per FSDP2 unit under ZeRO 2/3 (parallel.fsdp_unit_layers). 0, the whole model:
    # DeepSpeed's default buckets (reduce and all-gather 5e8 elements, stage 3 keeping up to
    # 1e9 parameters live) take this 5.3M-parameter model whole too, so both move it in a few
    # large collectives; one unit per block issues 2 of them per block
    fsdp_unit_layers: int = 0


# --- one rank -------------------------------------------------------------------------------


def _paratune(arm: Arm, setup: Setup, model_cfg):
    from engine import Engine, EngineConfig
    from engine.config import MeasureConfig, ParallelConfig, TrainConfig

    train = TrainConfig(
        micro_batch=setup.micro_batch,
        global_batch=setup.micro_batch * NPROC,
        precision=arm.precision,
        steps=setup.steps,
        warmup_steps=setup.warmup,
        grad_clip=0.0,
        **OPTIM,
    )
    units = setup.fsdp_unit_layers if arm.zero >= 2 else 1  # no FSDP below ZeRO 2
    config = EngineConfig(
        parallel=ParallelConfig(dp=NPROC, zero=arm.zero, fsdp_unit_layers=units),
        train=train,
        measure=MeasureConfig(profile_steps=0),  # no profiler: the stopwatch is outside
        device="cpu",
    )
    engine = Engine(model_cfg, config)
    return engine.train_batch, engine.close


def _deepspeed(arm: Arm, setup: Setup, model, loss_fn):
    import deepspeed
    import torch

    config = {
        "train_micro_batch_size_per_gpu": setup.micro_batch,
        "gradient_accumulation_steps": 1,
        "train_batch_size": setup.micro_batch * NPROC,
        "gradient_clipping": 0.0,  # its default is 1.0; the other arms do not clip
        "zero_optimization": {"stage": arm.zero},
        "bf16": {"enabled": arm.precision == "bf16"},
        "zero_allow_untested_optimizer": True,  # torch's AdamW, the same as the other arms
        "steps_per_print": 10**9,
    }
    optimizer = torch.optim.AdamW(model.parameters(), **OPTIM)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)

    def step(batch):
        x, y = batch
        loss = loss_fn(engine(x), y)
        engine.backward(loss)
        engine.step()
        return loss.item()

    return step, lambda: None


def _ddp(setup: Setup, model, loss_fn):
    import torch
    from torch.nn.parallel import DistributedDataParallel

    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), **OPTIM)

    def step(batch):
        x, y = batch
        loss = loss_fn(ddp(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step, lambda: None


def worker(arm: Arm, setup: Setup, out: Path) -> None:
    import torch
    import torch.distributed as dist

    from engine.config import ModelConfig
    from engine.data import SyntheticTokens
    from engine.model import GPT
    from engine.recipe import token_cross_entropy
    from engine.runtime import cpu_threads

    torch.set_num_threads(cpu_threads(NPROC))  # as the engine's ranks do
    model_cfg = ModelConfig(**setup.model)
    if arm.engine == "paratune":
        step, close = _paratune(arm, setup, model_cfg)  # joins the group itself
    else:
        dist.init_process_group("gloo")
        model = GPT(model_cfg, seed=0)  # the weights the engine builds from train.seed=0
        if arm.engine == "deepspeed":
            step, close = _deepspeed(arm, setup, model, token_cross_entropy)
        else:
            step, close = _ddp(setup, model, token_cross_entropy)
    rank, world = dist.get_rank(), dist.get_world_size()
    data = SyntheticTokens(model_cfg.vocab_size, model_cfg.seq_len, 0, setup.micro_batch * world)
    times, losses = [], []
    for i in range(setup.steps):
        [batch] = data.micro_batches(i, dp_rank=rank, dp=world, micro_batch=setup.micro_batch)
        dist.barrier()
        start = time.perf_counter()
        loss = step(batch)
        dist.barrier()
        times.append(time.perf_counter() - start)
        losses.append(loss)
    if rank == 0:
        out.write_text(json.dumps({"step_times_s": times, "losses": losses}))
    close()
    if dist.is_initialized():
        dist.destroy_process_group()


# --- the driver -----------------------------------------------------------------------------


def launch(arm: Arm, setup: Setup, tmp: Path, i: int) -> list[float]:
    from engine.launch import launch as launch_ranks

    out, logs = tmp / f"{i}-{arm.engine}{arm.zero}{arm.precision}.json", tmp / f"logs-{i}"
    cmd = [sys.executable, __file__, "--worker", json.dumps([asdict(arm), asdict(setup)])]
    result = launch_ranks([*cmd, str(out)], nproc=NPROC, log_dir=logs / arm.name, timeout_s=900)
    codes = result.returncodes
    # rank 0 writes its times after the last step's barrier, which every rank passed: an abort
    # after that is gloo's teardown, not the step (the tuner's verdicts read it so as well)
    finished = out.exists() and not result.timed_out
    if finished and all(c in (0, -signal.SIGABRT) for c in codes):
        if not result.ok:
            print(f"{arm.name}: a rank aborted at exit, after its last step ({codes})")
        return json.loads(out.read_text())["step_times_s"][setup.warmup :]
    failed = next((r for r, c in enumerate(codes) if c != 0), 0)
    tail = result.log_paths[failed].read_text()[-3000:]
    raise SystemExit(f"{arm.name} failed ({codes}); rank {failed}'s log ends:\n{tail}")


def table(per_launch: dict[Arm, list[float]], tokens: int, command: str, *, quick: bool) -> str:
    tps = {a: [tokens / t for t in v] for a, v in per_launch.items()}
    med = {a: statistics.median(v) for a, v in tps.items()}
    lines = [
        f"# paratune vs DeepSpeed ({time.strftime('%Y-%m-%d')})",
        "",
        f"Command: `{command}`",
        "",
        "| arm | median tokens/s | min | max | launches |",
        "|---|---|---|---|---|",
        *(
            f"| {a.name} | {med[a]:,.0f} | {min(v):,.0f} | {max(v):,.0f} | {len(v)} |"
            for a, v in tps.items()
        ),
        "",
        "| precision | stage | paratune / DeepSpeed (median tokens/s) |",
        "|---|---|---|",
    ]
    for prec in ("fp32", "bf16"):
        for z in range(4):
            ours, theirs = Arm("paratune", z, prec), Arm("deepspeed", z, prec)
            if ours in med and theirs in med:
                lines.append(f"| {prec} | ZeRO-{z} | {med[ours] / med[theirs]:.3f}x |")
    ddp, ours = Arm("ddp", 0, "fp32"), Arm("paratune", 0, "fp32")
    if ddp in med and ours in med:
        lines.append(f"| fp32 | ZeRO-0 vs bare DDP + AdamW | {med[ours] / med[ddp]:.3f}x |")
    if quick:
        lines += ["", "--quick: a check that every arm runs; these timings mean nothing."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="launches per arm, interleaved")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="tiny model, 4 steps, 1 launch")
    parser.add_argument("--fsdp-unit-layers", type=int, default=0, help="0: the whole model")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        arm, setup = json.loads(args.worker[0])
        worker(Arm(**arm), Setup(**setup), Path(args.worker[1]))
        return
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise SystemExit(  # noqa: B904 (the import error itself says nothing more)
            f"DeepSpeed is not installed in {sys.executable}'s environment; from the "
            f"repository root:\n{INSTALL}"
        )
    if args.quick:
        setup, repeats = Setup({}, 2, 4, 2, args.fsdp_unit_layers), 1
    else:
        setup = Setup(MODEL, args.micro_batch, args.steps, args.warmup, args.fsdp_unit_layers)
        repeats = args.repeats
    per_launch: dict[Arm, list[float]] = {a: [] for a in ARMS}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            for arm in ARMS if i % 2 == 0 else ARMS[::-1]:
                per_launch[arm].append(statistics.median(launch(arm, setup, Path(tmp), i)))
                print(f"{arm.name}: {per_launch[arm][-1] * 1000:.1f} ms/step", flush=True)
    from engine.config import ModelConfig

    seq = ModelConfig(**setup.model).seq_len
    command = "bench/.venv-deepspeed/bin/python bench/vs_deepspeed.py " + " ".join(sys.argv[1:])
    text = table(per_launch, setup.micro_batch * NPROC * seq, command.strip(), quick=args.quick)
    print(text)
    if not args.quick:
        (ROOT / "bench" / "results" / "vs_deepspeed.md").write_text(text)


if __name__ == "__main__":
    main()
