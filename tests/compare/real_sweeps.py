"""Two small real sweeps of the tiny model that differ only in precision (fp32, bf16), each
measuring every layout of the same space, run once per test session and shared by the
comparison's and the browser's tests."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import cli

NAMES = ("fp32", "bf16")
# the first test that asks for them waits for both sweeps (minutes on 2 busy cores)
TIMEOUT_S = 1800
# every (dp, micro_batch) of a 2 x 2 space, in both sweeps: 4 short runs each
SPACE = (
    "'~space.train.precision'",
    "space.parallel.dp=[1,2]",
    "space.train.micro_batch=[2,4]",
    "sampler=bruteforce",
    "sweep.n_trials=4",
    "train.steps=8",
    "sweep.early_stop=false",  # every layout measured whole
)


def sweep_args(name: str) -> list[str]:
    return [
        "sweep",
        "model=tiny",
        f"sweep.name={name}",
        f"train.precision={name}",
        *(a.strip("'") for a in SPACE),
    ]


def two_sweeps(root: Path) -> Path:
    """A folder whose reports/ holds both sweeps (run on the first call of the session)."""
    done = root / "done"
    if done.is_file():
        return root
    root.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        proc = cli(*sweep_args(name), cwd=root)
        assert proc.returncode == 0, proc.stderr[-3000:]
    done.write_text("both sweeps measured\n")
    return root
