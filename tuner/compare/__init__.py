"""Several sweeps compared on one page (``python -m tuner compare NAME NAME...``): the sweeps
as read from their studies (``sweeps``), tables from them (``data``), plotly figures
(``figures``), the HTML page (``page``) and the command (``command``)."""

from __future__ import annotations

from tuner.compare.data import knob_effects, side_by_side, side_table, winners
from tuner.compare.sweeps import Sweep, conditions, from_study, model_difference

__all__ = [
    "Sweep",
    "conditions",
    "from_study",
    "knob_effects",
    "model_difference",
    "side_by_side",
    "side_table",
    "winners",
]
