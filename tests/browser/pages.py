"""Each kind of page the tuner writes, made as a user makes it (the real commands): the sweep
report, the comparison of two sweeps, the plan."""

from __future__ import annotations

from pathlib import Path

from tests.compare.real_sweeps import NAMES
from tests.helpers import cli

PLAN = ("plan", "model=gpt2-small", "cluster=h100-sxm", "cluster.nodes=1", "train.global_batch=64")


def sweep_report(sweeps_dir: Path) -> Path:
    return sweeps_dir / "reports" / NAMES[0] / "report.html"


def compare_page(sweeps_dir: Path) -> Path:
    out = sweeps_dir / "reports" / "compare" / "browser.html"
    proc = cli("compare", *NAMES, f"compare.out={out}", cwd=sweeps_dir)
    assert proc.returncode == 0, proc.stderr
    return out


def plan_page(root: Path) -> Path:
    out = root / "plan.html"
    proc = cli(*PLAN, f"plan.html={out}", "plan.top_k=8", cwd=root)
    assert proc.returncode == 0, proc.stderr
    return out


KINDS = {"sweep": sweep_report, "compare": compare_page, "plan": plan_page}
#: the largest page each kind may be: plotly.js inlined (4.8 MB) and the page's own part
MAX_BYTES = {"sweep": 6_000_000, "compare": 5_500_000, "plan": 6_000_000}
MAX_SCREENSHOT_BYTES = 400_000  # a PNG of the top of the page, small enough to commit
