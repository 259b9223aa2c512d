"""``LearningRateFinderReport``: Lightning's learning-rate finder, reported where a command-line user looks.

Lightning's :class:`~lightning.pytorch.callbacks.LearningRateFinder` runs its range test when the fit
starts (an exponentially growing learning rate over ``num_training_steps`` batches, from a copy of the
starting weights it restores afterwards) and sets the module's ``lr`` to the suggestion
(:attr:`mlplab.LitMLP.lr`). This subclass adds what a user of ``mlplab fit`` needs to use it: one
printed line with the suggestion and the option that applies it, the loss-versus-learning-rate plot as
``lr_find.png`` in the run's folder and as the TensorBoard figure ``lr_find``, and (by default) the end
of the fit right after the search, so that the command finds a learning rate without training::

    mlplab fit --config configs/mnist.yaml --config configs/lr_find.yaml

With ``then_fit=True`` the fit goes on with the suggested learning rate (Lightning's own behaviour).
A schedule that sets its own peak (OneCycleLR's ``max_lr``) overrides the optimizer's learning rate
at every step, so there the suggestion is a value for ``max_lr``, not for ``lr``.
"""

from __future__ import annotations

import io
from pathlib import Path

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import LearningRateFinder
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from matplotlib.figure import Figure

from mlplab.data.idx import atomic_write_bytes

PLOT_NAME = "lr_find.png"


class LearningRateFinderReport(LearningRateFinder):
    """Lightning's ``LearningRateFinder`` that prints its suggestion, saves its plot and (unless ``then_fit``) ends the fit.

    Args:
        min_lr, max_lr, num_training_steps, mode, early_stop_threshold: the range test, as in Lightning's callback.
        then_fit: go on training with the suggested learning rate after the search; by default the fit ends there.
    """

    def __init__(
        self,
        min_lr: float = 1e-8,
        max_lr: float = 1.0,
        num_training_steps: int = 100,
        mode: str = "exponential",
        early_stop_threshold: float | None = 4.0,
        then_fit: bool = False,
    ) -> None:
        super().__init__(min_lr, max_lr, num_training_steps, mode, early_stop_threshold, update_attr=True)
        self.then_fit, self.min_lr, self.max_lr = then_fit, min_lr, max_lr
        self.suggestion: float | None = None
        self.plot_path: Path | None = None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.lr_find(trainer, pl_module)
        if self.optimal_lr is None:  # (Lightning skips the search under fast_dev_run)
            return
        self.suggestion = self.optimal_lr.suggestion()
        if trainer.is_global_zero:
            self._save_plot(trainer)
            self._report()
        if not self.then_fit:
            trainer.should_stop = True  # the fit loop ends before its first epoch

    @property
    def ended_the_fit(self) -> bool:
        """Whether this callback searched and then stopped the fit (nothing was trained: there is nothing to test)."""
        return self.optimal_lr is not None and not self.then_fit

    def _save_plot(self, trainer: Trainer) -> None:
        figure = Figure(figsize=(6, 4), layout="constrained")
        axes = figure.add_subplot()
        self.optimal_lr.plot(suggest=True, ax=axes)
        title = "no suggestion" if self.suggestion is None else f"suggested lr = {self.suggestion:.3g}"
        axes.set_title(f"learning-rate range test: {title}")
        axes.grid(True, which="both", alpha=0.3)
        tensorboard = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        folder = trainer.log_dir or trainer.default_root_dir
        if folder is not None:
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=100)
            self.plot_path = Path(folder) / PLOT_NAME
            atomic_write_bytes(self.plot_path, buffer.getvalue())
        if tensorboard is not None:
            tensorboard.experiment.add_figure("lr_find", figure, global_step=trainer.global_step, close=True)

    def _report(self) -> None:
        plot = f"; plot: {self.plot_path}" if self.plot_path is not None else ""
        points = len(self.optimal_lr.results.get("lr", []))
        if self.suggestion is None:
            rank_zero_info(
                f"mlplab: lr_find found no suggestion ({points} learning rates tried; the loss never fell steadily){plot}. "
                "Try a wider range or more steps: --lr_finder.init_args.num_training_steps=200."
            )
            return
        rank_zero_info(
            f"mlplab: lr_find suggests lr={self.suggestion:.3g} ({points} learning rates from {self.min_lr:g} to {self.max_lr:g}){plot}. "
            f"Train with it: --model.optimizer.init_args.lr={self.suggestion:.3g}"
        )
