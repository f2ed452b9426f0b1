from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from engine.units import GIB, MIB
from tests.tuner.report_helpers import BASE, OOM_DETAIL, _add, _p


@pytest.fixture
def study() -> optuna.Study:
    """Ten trials whose Pareto front (memory vs throughput) is trials 8, 1, 2 by construction."""
    s = optuna.create_study(storage=None, direction="maximize", study_name="s")
    s.set_user_attr("base_overrides", BASE)
    s.set_user_attr("objectives", ["tokens_per_s"])
    s.set_user_attr("sweep_name", "tiny <dp> sweep")
    complete = TrialState.COMPLETE
    # 0: dominated by 1 (more memory, less throughput).
    _add(
        s,
        complete,
        _p(1, 4),
        tps=1000.0,
        mem=4 * GIB,
        tokens_per_s_min=950.0,
        tokens_per_s_max=1030.0,
        step_time_s=0.5,
        mfu=0.21,
        comm_bytes=0,
        duration_s=12.5,
        log_dir="/logs/0",
    )
    _add(
        s,
        complete,
        _p(2, 4),
        tps=1800.0,
        mem=3 * GIB,
        tokens_per_s_min=1700.0,
        tokens_per_s_max=1850.0,
        step_time_s=0.25,
        comm_bytes=3 * MIB,
        comm_time_s=0.004,
        comm_count=12,
        mfu=0.375,
        world_size=2,
        log_dir="/logs/1",
    )
    _add(
        s,
        complete,
        {**_p(2, 8), "parallel.tp": 2},
        tps=2500.0,
        mem=6 * GIB,
        step_time_s=0.2,
        mfu=0.5,
        log_dir="/logs/2",
    )
    _add(
        s,
        TrialState.FAIL,
        _p(1, 8, "fp32"),
        fail_reason="oom",
        fail_detail=OOM_DETAIL,
        log_dir="/logs/3",
    )
    # 4: repeats trial 1; its reused values must not count twice.
    _add(s, complete, _p(2, 4), tps=1800.0, mem=3 * GIB, duplicate_of=1)
    # 5: equal to trial 1 in both coordinates; only the lower number stays on the front.
    _add(s, complete, _p(4, 2, "fp16"), tps=1800.0, mem=3 * GIB)
    _add(
        s,
        TrialState.PRUNED,
        {"parallel.dp": 3},
        fail_reason="infeasible",
        fail_detail="dp=3 does not divide global_batch=8",
        log_dir="/logs/6",
    )
    # 7: same throughput as trial 2 but more memory: dominated.
    _add(s, complete, _p(4, 4), tps=2500.0, mem=7 * GIB)
    _add(s, complete, _p(1, 1), tps=500.0, mem=1 * GIB)
    # 9: completed but the memory probe failed: cannot be placed on the front.
    _add(s, complete, _p(1, 2), tps=9000.0)
    return s
