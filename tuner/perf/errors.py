"""How far the step-time model has been off, by kind of layout: the band each prediction
carries. Measured by bench/planner_accuracy.py on held-out layouts (written to
bench/results/planner_accuracy.json); a cluster it has not been validated on says so."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.perf.cluster import Cluster

ACCURACY_FILE = Path(__file__).resolve().parents[2] / "bench" / "results" / "planner_accuracy.json"


def layout_kind(dp: int, tp: int, pp: int) -> str:
    """dp, tp, pp, dp+tp, ... or single: the parallel dimensions a layout uses."""
    dims = [name for name, n in (("dp", dp), ("tp", tp), ("pp", pp)) if n > 1]
    return "+".join(dims) or "single"


@dataclass(frozen=True)
class ErrorBands:
    """Relative step-time error per layout kind: mean absolute (MAPE) and worst, over n."""

    by_kind: dict[str, dict[str, float]] = field(default_factory=dict)
    source: str = ""  # where the figures come from; "" = not validated

    def describe(self) -> str:
        if not self.by_kind:
            return "not validated on this hardware (datasheet rates, prior efficiencies)"
        overall = self.by_kind.get("all")
        text = f"{self.source}"
        if overall:
            text += (
                f": step-time MAPE {100 * overall['mape']:.0f}% (worst {100 * overall['max']:.0f}%)"
            )
        return text

    def for_row(self, row: Any) -> dict[str, float] | None:
        """The band of ``row``'s kind of layout (or the overall one), None if not validated."""
        kind = layout_kind(row.dp, row.tp, row.pp)
        return self.by_kind.get(kind) or self.by_kind.get("all")

    @classmethod
    def from_residuals(cls, kinds: list[str], residuals: list[float], source: str) -> ErrorBands:
        groups: dict[str, list[float]] = {"all": [abs(r) for r in residuals]}
        for kind, r in zip(kinds, residuals, strict=True):
            groups.setdefault(kind, []).append(abs(r))
        return cls(
            {k: {"mape": sum(v) / len(v), "max": max(v), "n": len(v)} for k, v in groups.items()},
            source,
        )


def load_bands(cluster: Cluster) -> ErrorBands:
    """The recorded validation for this kind of cluster (the local machine on CPU), if any."""
    try:
        data = json.loads(ACCURACY_FILE.read_text())
    except (OSError, ValueError):
        return ErrorBands()
    entry = data.get("bands", {}).get(cluster.backend)
    if not entry:
        return ErrorBands()
    return ErrorBands(entry["by_kind"], entry["source"])
