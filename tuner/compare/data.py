"""Data step of the comparison page: plain DataFrames from several sweeps, nothing drawn.

The first sweep named is the reference: ratios are "this sweep / the reference" for the same
layout, and every throughput is also given as a share of its own sweep's best, so sweeps of
very different speed can be read on one scale.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from tuner.compare.sweeps import Measured, Sweep, conditions, layout_of

if TYPE_CHECKING:
    from collections.abc import Sequence

SIDE_COLUMNS = (
    "layout",
    "key",
    "sweep",
    "trial",
    "tokens_per_s",
    "ci_low",
    "ci_high",
    "peak_mem_bytes",
    "pct_of_best",
    "ratio",
    "distinguishable",
)


def _overlap(a: Measured, b: Measured) -> bool | None:
    """Whether the two throughput intervals overlap (None where either has none)."""
    if None in (a.ci_low, a.ci_high, b.ci_low, b.ci_high):
        return None
    return a.ci_low <= b.ci_high and b.ci_low <= a.ci_high


def _by_layout(sweeps: Sequence[Sweep]) -> dict[str, dict[str, Measured]]:
    """layout key -> sweep name -> its measurement (the fastest, should one sweep hold two)."""
    skip = conditions(sweeps)
    out: dict[str, dict[str, Measured]] = {}
    for sweep in sweeps:
        for m in sorted(sweep.measured, key=lambda m: (-m.tokens_per_s, m.number)):
            out.setdefault(layout_of(m, skip), {}).setdefault(sweep.name, m)
    return out


def _label(runs: dict[str, Measured]) -> str:
    """The words every sweep's description of the layout shares (a condition such as the
    precision is said in the sweep's name, not in the layout's)."""
    words = [m.label.split() for m in runs.values()]
    return " ".join(w for w in words[0] if all(w in other for other in words[1:]))


def side_by_side(sweeps: Sequence[Sweep]) -> pd.DataFrame:
    """Every layout measured by at least two of the sweeps, one row per (layout, sweep),
    fastest in the reference first; ``ratio`` is tokens/s over the reference's for the same
    layout, ``distinguishable`` whether their intervals are apart."""
    ref = sweeps[0].name
    best = {s.name: s.best.tokens_per_s if s.best else None for s in sweeps}
    shared = {k: runs for k, runs in _by_layout(sweeps).items() if len(runs) >= 2}

    def order(item: tuple[str, dict[str, Measured]]) -> tuple[float, float]:
        runs = item[1]
        in_ref = runs[ref].tokens_per_s if ref in runs else float("-inf")
        return (-in_ref, -max(m.tokens_per_s for m in runs.values()))

    rows, labels = [], {}
    for key, runs in sorted(shared.items(), key=order):
        label = _label(runs)
        if label in labels.values():  # two layouts the words do not tell apart
            label += f" (#{next(iter(runs.values())).number})"
        labels[key] = label
        base = runs.get(ref)
        for sweep in sweeps:
            m = runs.get(sweep.name)
            if m is None:
                continue
            overlap = _overlap(m, base) if base is not None and sweep.name != ref else None
            rows.append(
                {
                    "layout": label,
                    "key": key,
                    "sweep": sweep.name,
                    "trial": m.number,
                    "tokens_per_s": m.tokens_per_s,
                    "ci_low": m.ci_low,
                    "ci_high": m.ci_high,
                    "peak_mem_bytes": m.peak_mem_bytes,
                    "pct_of_best": 100 * m.tokens_per_s / best[sweep.name],
                    "ratio": m.tokens_per_s / base.tokens_per_s if base is not None else None,
                    "distinguishable": None if overlap is None else not overlap,
                }
            )
    return pd.DataFrame(rows, columns=list(SIDE_COLUMNS))


def side_table(side: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """``side_by_side`` as one row per layout: tokens/s per sweep, then each ratio."""
    if side.empty:
        return pd.DataFrame(columns=["layout"])
    wide = side.pivot(index="key", columns="sweep", values="tokens_per_s")
    ratio = side.pivot(index="key", columns="sweep", values="ratio")
    keys = list(dict.fromkeys(side["key"]))
    out = pd.DataFrame({"layout": side.drop_duplicates("key").set_index("key")["layout"]})
    for name in names:
        out[f"{name} tokens/s"] = wide.get(name)
    for name in names[1:]:
        out[f"{name} / {names[0]}"] = ratio.get(name)
    return out.loc[keys].reset_index(drop=True)


def winners(sweeps: Sequence[Sweep], side: pd.DataFrame) -> pd.DataFrame:
    """Each sweep's fastest layout, and how fast it is in every sweep: % of that sweep's best
    (blank where that sweep did not measure it). One row per distinct winner."""
    skip = conditions(sweeps)
    labels = dict(zip(side["key"], side["layout"]))
    rows: dict[str, dict[str, object]] = {}
    by_layout = _by_layout(sweeps)
    for sweep in sweeps:
        if sweep.best is None:
            continue
        key = layout_of(sweep.best, skip)
        row = rows.setdefault(key, {"layout": labels.get(key, sweep.best.label), "wins in": []})
        row["wins in"].append(sweep.name)
    for key, row in rows.items():
        for sweep in sweeps:
            m = by_layout[key].get(sweep.name)
            best = sweep.best
            row[f"% of best in {sweep.name}"] = (
                100 * m.tokens_per_s / best.tokens_per_s if m is not None and best else None
            )
        row["wins in"] = ", ".join(row["wins in"])
    return pd.DataFrame(list(rows.values()))


def knobs(sweeps: Sequence[Sweep]) -> list[str]:
    """The knobs any of the sweeps searched, in the order they first appear."""
    return list(dict.fromkeys(k for s in sweeps for k in s.searched))


def knob_effects(sweeps: Sequence[Sweep]) -> pd.DataFrame:
    """Per searched knob and value, in each sweep: the fastest trial with that value (as % of
    the sweep's best, and which layout it was), the median over those trials and their count."""
    rows = []
    for knob in knobs(sweeps):
        for sweep in sweeps:
            if sweep.best is None:
                continue
            groups: dict[str, list[Measured]] = {}
            for m in sweep.measured:
                if knob in m.config:
                    groups.setdefault(_shown(m.config[knob]), []).append(m)
            for value, runs in sorted(groups.items(), key=lambda kv: _order(kv[0])):
                fastest = max(runs, key=lambda m: (m.tokens_per_s, -m.number))
                tps = pd.Series([m.tokens_per_s for m in runs])
                rows.append(
                    {
                        "knob": knob,
                        "value": value,
                        "sweep": sweep.name,
                        "trials": len(runs),
                        "best_tokens_per_s": fastest.tokens_per_s,
                        "best_pct": 100 * fastest.tokens_per_s / sweep.best.tokens_per_s,
                        "median_pct": 100 * tps.median() / sweep.best.tokens_per_s,
                        "best_layout": fastest.label,
                    }
                )
    columns = ["knob", "value", "sweep", "trials", "best_tokens_per_s", "best_pct"]
    return pd.DataFrame(rows, columns=[*columns, "median_pct", "best_layout"])


def _shown(value: object) -> str:
    """A knob's value as the command line writes it ("" for a knob the layout normalised away)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "(none)" if value == "" else str(value)


def _order(shown: str) -> tuple[int, float, str]:
    """Numbers in numeric order, then words."""
    try:
        return (0, float(shown), "")
    except ValueError:
        return (1, 0.0, shown)
