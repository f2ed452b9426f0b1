"""Which trials the end-of-sweep confirmation measures again, and how it rules."""

from __future__ import annotations

import optuna
from optuna.distributions import CategoricalDistribution

from tuner.confirm import Contender, close_to_best, judge
from tuner.study import RESULT_ATTR


def _trial(number: int, tps: float, ci: tuple[float, float], **attrs) -> optuna.trial.FrozenTrial:
    t = optuna.trial.create_trial(
        params={"x": number},
        distributions={"x": CategoricalDistribution(list(range(10)))},
        value=tps,
        user_attrs={RESULT_ATTR: {"tokens_per_s": tps, "tokens_per_s_ci": list(ci)}, **attrs},
    )
    t.number = number
    return t


def test_the_close_ones_are_those_whose_interval_reaches_the_best():
    trials = [
        _trial(0, 100.0, (95, 105)),
        _trial(1, 97.0, (94, 99)),  # reaches 95
        _trial(2, 90.0, (88, 94.9)),  # does not
        _trial(3, 99.0, (90, 108), duplicate_of=0),  # a repeat: not a contender of its own
        _trial(4, 96.0, (92, 100)),
    ]
    assert [t.number for t in close_to_best(trials, 5)] == [0, 1, 4]
    assert [t.number for t in close_to_best(trials, 2)] == [0, 1]
    assert close_to_best([], 3) == []


def test_a_winner_is_named_only_when_its_slowest_launch_beats_every_other_fastest():
    apart = judge([Contender(1, [90, 91, 92]), Contender(0, [95, 96, 97])])
    assert apart.winner == 0 and apart.text.startswith("confirmed: trial 0 wins")
    assert [c.trial for c in apart.contenders] == [0, 1]
    close = judge([Contender(1, [90, 96, 92]), Contender(0, [95, 96, 97])])
    assert close.winner is None and "cannot be told apart" in close.text
