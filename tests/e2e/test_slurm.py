"""launcher=slurm against a real single-node Slurm (started here): parity, and Slurm's own
endings of a step mapped onto the failure taxonomy."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch

from tests import slurm_cluster
from tests.helpers import cli, cli_started, wait_until

pytestmark = [
    pytest.mark.long,
    pytest.mark.slow,
    pytest.mark.skipif(bool(slurm_cluster.missing()), reason=slurm_cluster.missing() or "-"),
]
FAST = ["model=tiny", "train.steps=5", "train.warmup_steps=1"]
LAYOUT = ["parallel.dp=2", "train.micro_batch=4", "train.global_batch=8"]
LOSS_ATOL = 1e-5  # fp32 parity, as the layout suite (tests/engine/test_layouts.py)


@pytest.fixture(scope="module")
def slurm():
    with slurm_cluster.single_node_slurm() as env:
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # the CLI's srun and the checks below find this cluster
        try:
            yield env
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _jobs() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True)
    return out.stdout.split()


def test_a_trial_as_a_slurm_step_trains_as_the_local_launcher_does(slurm, tmp_path):
    out = {}
    for name, launcher in (("local", []), ("slurm", ["launcher=slurm"])):
        out[name] = tmp_path / f"{name}.json"
        proc = cli("run", *FAST, *LAYOUT, *launcher, f"run.out={out[name]}", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    local, step = (json.loads(out[n].read_text()) for n in ("local", "slurm"))
    torch.testing.assert_close(step["losses"], local["losses"], rtol=0, atol=LOSS_ATOL)
    run_dir = max((tmp_path / "reports" / "runs").iterdir())
    assert (run_dir / "node.sh").exists() and (run_dir / "agent0.log").exists()
    assert all((run_dir / f"rank{r}.exit.json").exists() for r in (0, 1))
    assert not _jobs()


def test_a_step_slurm_cancels_and_a_step_past_its_timeout_fail_cleanly(slurm, tmp_path):
    long = [*FAST, *LAYOUT, "train.steps=2000", "launcher=slurm"]
    with cli_started("run", *long, cwd=tmp_path) as run:
        assert wait_until(lambda: bool(_jobs()), timeout_s=120), "no job was started"
        ranks = lambda: list((tmp_path / "reports" / "runs").glob("*/rank*.log"))  # noqa: E731
        assert wait_until(lambda: len(ranks()) == 2, timeout_s=240), "no rank started"
        subprocess.run(["scancel", *_jobs()], check=True)
        _, err = run.communicate(timeout=120)
    assert run.returncode == 1
    assert "run failed (crash): Slurm:" in err and "CANCELLED" in err, err
    assert wait_until(lambda: not _jobs(), timeout_s=30)

    slow = cli("run", *long, "launcher.timeout_s=20", cwd=tmp_path)
    assert slow.returncode == 1 and "run failed (timeout)" in slow.stderr, slow.stderr
    assert wait_until(lambda: not _jobs(), timeout_s=30)


def test_slurms_own_time_limit_is_a_timeout(slurm, tmp_path):
    # Slurm's limit (a minute, its smallest) ends the step before the sweep's own timeout
    long = [*FAST, *LAYOUT, "train.steps=100000", "launcher=slurm", "launcher.timeout_s=400"]
    proc = cli("run", *long, 'launcher.srun_args=["--time=1"]', cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "run failed (timeout): Slurm:" in proc.stderr and "TIME LIMIT" in proc.stderr
    assert wait_until(lambda: not _jobs(), timeout_s=30)
