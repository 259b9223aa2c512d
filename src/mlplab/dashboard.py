"""``CustomScalarsLayout``: train against validation on one chart, in TensorBoard's Custom Scalars dashboard.

TensorBoard's Scalars tab draws every tag on a card of its own, so the moment validation loss turns up
while training loss keeps falling has to be found by eye across two cards. Its Custom Scalars dashboard
draws several tags on one chart, following a layout the run writes once (``SummaryWriter.add_custom_scalars``).
This callback writes that layout when a fit starts: one chart per metric the module logs with its
``train/``, ``val/`` and ``test/`` values together (the test value a single point where a test ran), one
with the learning rate, and optionally seed 000's d2l chart (train loss, train accuracy, validation and
test accuracy). The Scalars and HParams tabs are unchanged, so several runs under one ``--logdir`` still
compare run against run there.
"""

from __future__ import annotations

import re
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

STAGE_PREFIXES = ("train", "val", "test")
CATEGORY = "mlplab: train against validation"


def metric_names(module: LightningModule) -> list[str]:
    """The metrics the module logs for both ``train/`` and ``val/`` (``loss``, ``acc``, ``mse`` ...), loss first."""
    logged = module.logged_metric_names() if hasattr(module, "logged_metric_names") else set()
    names = {key.removeprefix("val/") for key in logged if key.startswith("val/") and "train/" + key.removeprefix("val/") in logged}
    return sorted(names, key=lambda name: (name != "loss", name))


def layout_for(module: LightningModule, d2l_chart: bool) -> dict[str, dict[str, list[Any]]]:
    """The Custom Scalars layout: ``{category: {chart title: ["Multiline", [tag regexes]]}}``."""
    charts: dict[str, list[Any]] = {}
    for name in metric_names(module):
        charts[name] = ["Multiline", [rf"^({'|'.join(STAGE_PREFIXES)})/{re.escape(name)}$"]]
    charts["learning rate"] = ["Multiline", [r"^lr-"]]
    layout = {CATEGORY: charts}
    if d2l_chart:
        layout["d2l train_ch3"] = {
            "train loss, train acc, validation and test acc": ["Multiline", [r"^train/(loss|acc)$", r"^(val|test)/acc$"]]
        }
    return layout


class CustomScalarsLayout(Callback):
    """Write the Custom Scalars layout of :func:`layout_for` to the fit's TensorBoard run, once, when the fit starts.

    Args:
        d2l_chart: also the chart seed 000 draws (d2l's ``train_ch3``): train loss, train accuracy, validation and test accuracy.
    """

    def __init__(self, d2l_chart: bool = False) -> None:
        self.d2l_chart = d2l_chart

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        tensorboard = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if tensorboard is None or not trainer.is_global_zero:
            return
        tensorboard.experiment.add_custom_scalars(layout_for(pl_module, self.d2l_chart))
