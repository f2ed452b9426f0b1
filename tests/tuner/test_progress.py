"""Progress lines speak the layout's language: derived degrees shown, idle knobs left out."""

from __future__ import annotations

import pytest

from tuner.config import load
from tuner.progress import WIDTH, format_line, format_params, header

LAYOUTS = ["+experiment=layouts"]  # world size 4, dp derived from it


def _base(*overrides):
    return load([*LAYOUTS, *overrides]).run


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        # pp=1: the schedule does nothing, one stage per rank states nothing; dp = 4 / (2 * 1)
        (
            {
                "parallel.tp": 2,
                "parallel.pp": 1,
                "parallel.zero": 1,
                "parallel.pp_schedule": "interleaved_1f1b",
                "parallel.pp_virtual_stages": 1,
                "train.micro_batch": 2,
            },
            "dp2 · ZeRO-1 · tp2 · pp1 · mb2 · fp32 · no AC",
        ),
        # pp=2 with a schedule of one stage per rank: virtual stages=1 states nothing
        (
            {
                "parallel.tp": 1,
                "parallel.pp": 2,
                "parallel.pp_schedule": "1f1b",
                "parallel.pp_virtual_stages": 1,
            },
            "dp2 · DDP · tp1 · pp2 1f1b · mb4 · fp32 · no AC",
        ),
        # virtual stages where they cannot be: shown, they are why the trial is pruned
        (
            {"parallel.pp": 1, "parallel.pp_virtual_stages": 2},
            "dp4 · DDP · tp1 · pp1×2 · mb4 · fp32 · no AC",
        ),
        # interleaved over 2 stages: every knob applies
        (
            {
                "parallel.tp": 2,
                "parallel.pp": 2,
                "parallel.pp_schedule": "interleaved_1f1b",
                "parallel.pp_virtual_stages": 2,
                "train.precision": "bf16",
            },
            "dp1 · tp2 · pp2 interleaved_1f1b×2 · mb4 · bf16 · no AC",
        ),
        # cannot resolve (3 does not divide 4): shown as asked, pruned later with the reason
        ({"parallel.tp": 3, "parallel.pp": 1}, "dp? · tp3 · pp1 · mb4 · fp32 · no AC"),
    ],
)
def test_params_show_derived_dp_and_omit_idle_knobs(params, expected):
    assert format_params(_base(), params) == expected


def test_explicit_dp_is_not_rederived():
    base = load([]).run  # dp=1, no world size
    assert format_params(base, {"parallel.dp": 2, "train.micro_batch": 4}) == (
        "dp2 · DDP · tp1 · pp1 · mb4 · fp32 · no AC"
    )


def test_lines_stay_within_width():
    base = _base()
    widest = {
        "parallel.tp": 2,
        "parallel.pp": 2,
        "parallel.zero": 3,
        "parallel.pp_schedule": "interleaved_1f1b",
        "parallel.pp_virtual_stages": 2,
        "train.micro_batch": 4,
        "train.precision": "bf16",
        "train.activation_checkpointing": "full",
    }
    params = format_params(base, widest)
    ok = format_line(
        done=12,
        total=100,
        number=123,
        params=params,
        status="ok 123456.7 tok/s",
        best="best tokens_per_s=123,456 (#17)",
    )
    assert len(ok) <= WIDTH and "\n" not in ok and ok.endswith("full AC  ok 123456.7 tok/s")
    short = format_line(
        done=1, total=4, number=0, params="tp=2 dp=2", status="ok 9.5 tok/s", best="best x=9.5 (#0)"
    )
    assert short == "[  1/4] #0   tp=2 dp=2  ok 9.5 tok/s  best x=9.5 (#0)"
    failed = format_line(
        done=12,
        total=100,
        number=123,
        params=params,
        status="FAILED (oom: rank 1: CUDA out of memory. " + "x" * 300 + ")",
        best="best tokens_per_s=123,456 (#17)",
    )
    lines = failed.split("\n")
    assert len(lines) == 2 and all(len(ln) <= WIDTH for ln in lines)
    assert "FAILED" in lines[0] and lines[1].lstrip().startswith("FAILED (oom: rank 1")


def test_header_names_the_derived_degree():
    text = header("layouts", ["parallel.tp", "parallel.pp"], "reports/layouts", _base())
    assert "dp derived per trial: world_size 4 / (tp * pp)" in text
    assert "derived" not in header("d", ["parallel.dp"], "reports/d", load([]).run)
