"""Data step for the report's measurement figures: the step-time breakdown and predicted vs
measured memory of each measured trial, as DataFrames (figures.py draws them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from engine.result_schema import BREAKDOWN_PARTS, FIELD, MEM_PARTS
from engine.units import MIB
from tuner.layout_name import unique_labels

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["BREAKDOWN_PARTS", "MEM_PARTS", "memory_prediction", "step_breakdown"]
# part -> its column (engine/result_schema.py); the stacked bars show the parts in this order
_BREAKDOWN_COLUMNS: dict[str, str] = dict(FIELD["breakdown"].parts)
_MEM_COLUMNS: dict[str, str] = dict(FIELD["mem_breakdown"].parts)


def _measured(df: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    ok = df[df["state"] == "COMPLETE"]
    ok = ok[ok["duplicate_of"].isna()]
    return ok[ok[list(columns)].notna().all(axis=1)]


def step_breakdown(df: pd.DataFrame) -> pd.DataFrame:
    """Milliseconds per step by part for each measured trial (rows in trial order), with the
    stopwatch's step time of the same profiled steps next to the parts' sum."""
    cols = [_BREAKDOWN_COLUMNS[p] for p in BREAKDOWN_PARTS]
    ok = _measured(df, cols)
    out = pd.DataFrame({"trial": unique_labels(ok["layout"], ok["number"])})
    for part, col in zip(BREAKDOWN_PARTS, cols, strict=True):
        out[part] = 1e3 * ok[col].to_numpy(dtype="float64")
    out["step_ms"] = 1e3 * ok["breakdown_step_s"].to_numpy(dtype="float64", na_value=np.nan)
    return out


#: The measured figure a prediction is compared with, as the report names it.
COMPARED_TO: dict[str, str] = {
    "tensor_peak_bytes": "tensor peak (CPU, profiler memory events)",
    "peak_mem_bytes": "allocator peak (CUDA)",
}


def memory_prediction(df: pd.DataFrame) -> pd.DataFrame:
    """MiB by predicted part, the predicted total and the measured figure the engine compared it
    with, like with like (CPU: the tensor-only peak; CUDA: the allocator's peak), for each trial
    that has both. A trial without that measurement is left out, never compared with another
    figure (the CPU's whole-process peak includes the runtime)."""
    cols = [_MEM_COLUMNS[p] for p in MEM_PARTS] + [
        "predicted_peak_mem_bytes",
        "mem_compared_bytes",
    ]
    ok = _measured(df, cols)
    out = pd.DataFrame({"trial": unique_labels(ok["layout"], ok["number"])})
    for part in MEM_PARTS:
        out[part] = ok[_MEM_COLUMNS[part]].to_numpy(dtype="float64") / MIB
    out["predicted"] = ok["predicted_peak_mem_bytes"].to_numpy(dtype="float64") / MIB
    out["measured"] = ok["mem_compared_bytes"].to_numpy(dtype="float64") / MIB
    out["compared_to"] = [
        COMPARED_TO.get(str(k), str(k)) for k in ok["mem_prediction_compared_to"].fillna("")
    ]
    out["error"] = (out["predicted"] - out["measured"]) / out["measured"]
    return out
