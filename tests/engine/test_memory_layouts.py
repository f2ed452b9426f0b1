"""The analytic memory peak against the CPU tensor peak, over the layouts the `layouts` space
(conf/space/layouts.yaml, as conf/experiment/layouts.yaml runs it) launches at world sizes 2
and 4, on the tiny model.

Every distinct parallel layout of the space (the parallel section and activation
checkpointing) runs once; micro-batch size and precision take each of the space's values in
turn across them, so every value meets the model. All layouts of one world size run in one
launch, one after another in the same process group, with the fewest steps that give a settled
profiled window (2 warmup, 1 profiled). The table is printed (``pytest -s``); README quotes it.

    python -m pytest tests/engine/test_memory_layouts.py -q -s
"""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from engine.config import ConfigError, RunConfig
from engine.launch import launch
from engine.metrics.memory_model import predict_all
from engine.validate import validate

REPO = Path(__file__).resolve().parents[2]
MEM_RTOL = 0.15
LAYOUT_KEYS = ("dp", "tp", "pp", "zero", "pp_schedule", "pp_virtual_stages")


def _space_layouts(world_size: int) -> list[RunConfig]:
    """One run per distinct parallel layout the space launches at ``world_size``."""
    from tests.helpers import tiny_config
    from tuner.space import build

    space = yaml.safe_load((REPO / "conf/space/layouts.yaml").read_text())
    base = tiny_config(
        parallel={"world_size": world_size, "dp": 0},
        # two warmup steps: DDP rebuilds its gradient buckets in the second step, and a
        # window that sees the new buckets while the old ones are counted alive is 4Ψ high
        train={"steps": 3, "warmup_steps": 2},
        measure={"profile_steps": 1},
    )
    searched = build(space, base)
    runs: dict[tuple, RunConfig] = {}
    for key in sorted(searched.distinct_layouts(base) or ()):
        data = json.loads(key)
        if "params" in data:  # cannot be resolved at this world size
            continue
        if data["parallel"]["pp"] == 1:  # normalised away; any valid name runs the same
            data["parallel"]["pp_schedule"] = base.parallel.pp_schedule
        try:
            cfg = validate(RunConfig.from_dict(data))
        except ConfigError:  # pruned by the tuner with its reason
            continue
        p = cfg.parallel
        layout = (*(getattr(p, k) for k in LAYOUT_KEYS), cfg.train.activation_checkpointing)
        runs.setdefault(layout, cfg)
    # cycle micro-batch size and precision through the space's values across the layouts
    variants = [
        (mb, prec) for mb in space["train"]["micro_batch"] for prec in space["train"]["precision"]
    ]
    out = []
    for i, cfg in enumerate(runs.values()):
        for mb, prec in variants[i % len(variants) :] + variants[: i % len(variants)]:
            data = cfg.to_dict()
            data["train"].update(micro_batch=mb, precision=prec)
            try:
                out.append(validate(RunConfig.from_dict(data)))
                break
            except ConfigError:
                continue
    return out


def _worker(config_path: str, out_path: str) -> None:
    """One rank: run every config in turn in one process group; rank 0 writes the peaks."""
    from engine import runtime
    from engine.runner import _gather
    from engine.train import train

    cfgs = [RunConfig.from_dict(d) for d in json.loads(Path(config_path).read_text())]
    ctx = runtime.init(cfgs[0])
    rows = []
    for cfg in cfgs:
        records = _gather(train(cfg, ctx), ctx)
        rows.append({"config": cfg.to_dict(), "measured": [r.tensor_peak_bytes for r in records]})
        del records
        gc.collect()  # the next run's live-tensor count must not see this one's tensors
    if ctx.is_main:
        Path(out_path).write_text(json.dumps(rows))
    runtime.close(ctx)


def _describe(cfg: RunConfig) -> str:
    p, t = cfg.parallel, cfg.train
    sched = f" {p.pp_schedule}/{p.pp_virtual_stages}" if p.pp > 1 else ""
    return (
        f"dp{p.dp} tp{p.tp} pp{p.pp} zero{p.zero}{sched} mb{t.micro_batch} {t.precision} "
        f"ac={t.activation_checkpointing}"
    )


@pytest.mark.slow
@pytest.mark.long
# 58 layouts one after another at world size 4: over pytest's 10 minutes on a loaded 2-core host
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("world_size", [2, 4])
def test_memory_prediction_within_tolerance_on_every_layout(tmp_path, world_size):
    cfgs = _space_layouts(world_size)
    assert len(cfgs) >= (6 if world_size == 2 else 30)  # the space was really enumerated
    path = tmp_path / "configs.json"
    path.write_text(json.dumps([c.to_dict() for c in cfgs]))
    out = tmp_path / "rows.json"
    res = launch(
        [sys.executable, __file__, str(path), str(out)],
        nproc=world_size,
        log_dir=tmp_path,
        timeout_s=1700,
    )
    logs = "\n".join(p.read_text() for p in res.log_paths)
    assert res.ok, f"exit codes {res.returncodes}\n{logs[-4000:]}"
    rows = json.loads(out.read_text())
    assert len(rows) == len(cfgs)
    errors = []
    for row in rows:
        cfg = RunConfig.from_dict(row["config"])
        predicted = max(x.total for x in predict_all(cfg, "cpu"))
        measured = max(row["measured"])
        errors.append(((predicted - measured) / measured, _describe(cfg), predicted, measured))
    errors.sort()
    print(f"\nworld size {world_size}: {len(errors)} layouts, (predicted - measured) / measured")
    for err, name, predicted, measured in errors:
        print(f"  {err:+6.1%}  {name:55s} {predicted / 1e6:6.2f} MB vs {measured / 1e6:6.2f} MB")
    print(f"  range {errors[0][0]:+.1%} .. {errors[-1][0]:+.1%}")
    off = [e for e in errors if abs(e[0]) > MEM_RTOL]
    assert not off, off


if __name__ == "__main__":  # one launched rank of the test above
    _worker(sys.argv[1], sys.argv[2])
    sys.stdout.flush()
    os._exit(0)  # as engine/__main__.py: skip interpreter teardown after the group is gone
