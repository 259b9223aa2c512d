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

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

STAGE_PREFIXES = ("train", "val", "test")
CATEGORY = "mlplab: train against validation"


def metric_names(module: LightningModule) -> list[str]:
    """The metrics the module logs for both ``train/`` and ``val/`` (``loss``, ``acc``, ``mse`` ...), loss first."""
    logged = module.logged_metric_names() if hasattr(module, "logged_metric_names") else set()
    names = {key.removeprefix("val/") for key in logged if key.startswith("val/") and "train/" + key.removeprefix("val/") in logged}
    return sorted(names, key=lambda name: (name != "loss", name))


def layout_for(module: LightningModule, d2l_chart: bool, datamodule: Any = None) -> dict[str, dict[str, list[Any]]]:
    """The Custom Scalars layout: ``{category: {chart title: ["Multiline", [tag regexes]]}}``."""
    charts: dict[str, list[Any]] = {}
    for name in metric_names(module):
        charts[name] = ["Multiline", [rf"^({'|'.join(STAGE_PREFIXES)})/{re.escape(name)}$"]]
    charts["learning rate"] = ["Multiline", [r"^lr-"]]
    layout = {CATEGORY: charts}
    if hasattr(datamodule, "true_line"):  # (RegressionFitFigure writes these)
        charts["w and b against the true line"] = ["Multiline", [r"^regression/(w|b)(_true)?$"]]
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
        tensorboard.experiment.add_custom_scalars(layout_for(pl_module, self.d2l_chart, trainer.datamodule))


class RegressionFitFigure(Callback):
    """Regression pictures in TensorBoard: the data and the model's function, or predicted against true values.

    Every ``every_n_epochs`` epochs and when the fit ends, the figure ``regression/fit`` shows the training and
    test points and the model's prediction over the input range (drawn at epoch ends, never per step), so its
    evolution can be scrolled in the Images tab. For a linear model (no hidden layer) on a data set that knows
    its true line (``LinearRegressionDataModule``: ``y = 3 + 2x``), ``regression/w`` and ``regression/b`` are
    written beside ``regression/w_true`` and ``regression/b_true`` at every step the logger writes. With more
    than one input, a test draws ``regression/predicted_vs_true``: each test sample's prediction against its target.

    Args:
        every_n_epochs: epochs between two figures (the last epoch always gets one).
    """

    def __init__(self, every_n_epochs: int = 10) -> None:
        if every_n_epochs <= 0:
            raise ValueError(f"every_n_epochs must be positive, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs
        self.tested: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.tested = []

    def on_test_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if getattr(trainer.datamodule, "task", None) == "regression" and not self._one_input(trainer) and isinstance(outputs, torch.Tensor):
            self.tested.append((outputs.detach().float().cpu(), batch[1].detach().float().cpu().view_as(outputs)))

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        experiment = self._tensorboard(trainer)
        if experiment is None or not self.tested:
            return
        from matplotlib.figure import Figure

        predicted, true = (torch.cat(parts).flatten() for parts in zip(*self.tested, strict=True))
        self.tested = []
        figure = Figure(figsize=(5, 5), layout="constrained")
        axes = figure.add_subplot()
        axes.scatter(true, predicted, s=8, alpha=0.5, label="test samples")
        low, high = float(min(true.min(), predicted.min())), float(max(true.max(), predicted.max()))
        axes.plot([low, high], [low, high], color="tab:red", label="predicted = true")
        axes.set(xlabel="true", ylabel="predicted", title=f"test, after step {trainer.global_step}")
        axes.legend()
        experiment.add_figure("regression/predicted_vs_true", figure, global_step=trainer.global_step, close=True)

    @staticmethod
    def _tensorboard(trainer: Trainer) -> Any:
        if not trainer.is_global_zero:
            return None
        return next((lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)

    @staticmethod
    def _one_input(trainer: Trainer) -> bool:
        datamodule = trainer.datamodule
        return getattr(datamodule, "task", None) == "regression" and tuple(getattr(datamodule, "input_shape", ())) == (1,)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        true_line = getattr(trainer.datamodule, "true_line", None)
        net = getattr(pl_module, "net", None)
        if true_line is None or net is None or len(getattr(net, "hidden", ())) or trainer.global_step % trainer.log_every_n_steps:
            return
        experiment = self._tensorboard(trainer)
        if experiment is None:
            return
        layer = net.output
        w, b = layer.weight.detach().flatten()[0].item(), layer.bias.detach().flatten()[0].item()
        for name, value in (("w", w), ("b", b), ("w_true", true_line[0]), ("b_true", true_line[1])):
            experiment.add_scalar(f"regression/{name}", value, trainer.global_step)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        last = trainer.current_epoch + 1 >= (trainer.max_epochs or 0)
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0 or last:
            self.draw(trainer, pl_module)

    def draw(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Add the figure of the data and the model's function at this step (a no-op without one input or TensorBoard)."""
        experiment = self._tensorboard(trainer)
        if experiment is None or not self._one_input(trainer):
            return
        from matplotlib.figure import Figure

        splits = trainer.datamodule.splits
        points = [(name, *splits[name]) for name in ("train", "test") if name in splits]
        low = min(float(x.min()) for _, x, _ in points)
        high = max(float(x.max()) for _, x, _ in points)
        grid = torch.linspace(low, high, 200).unsqueeze(1)
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            predicted = pl_module(grid.to(pl_module.device)).cpu()
        pl_module.train(was_training)
        figure = Figure(figsize=(6, 4), layout="constrained")
        axes = figure.add_subplot()
        for (name, x, y), style in zip(
            points, ({"marker": "o", "color": "tab:blue"}, {"marker": "x", "color": "tab:orange"}), strict=False
        ):
            axes.scatter(x.flatten(), y.flatten(), s=16, label=f"{name} points", **style)
        axes.plot(grid.flatten(), predicted.flatten(), color="tab:red", label="model")
        axes.set(xlabel="x", ylabel="y", title=f"epoch {trainer.current_epoch}, step {trainer.global_step}")
        axes.legend()
        experiment.add_figure("regression/fit", figure, global_step=trainer.global_step, close=True)
