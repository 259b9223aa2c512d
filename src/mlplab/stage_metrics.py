"""One stage's metrics (train, val or test), fed in bulk.

A torchmetrics update costs about as much as a small MLP's step, and the metrics mlplab logs
(mean loss, accuracy, F1, MSE, MAE, R²) are additive over batches: each step's loss and outputs
are kept (:meth:`StageMetrics.record`) and handed to the metrics in one update
(:meth:`StageMetrics.flush`) at the epoch's end, before a checkpoint, or every
``MAX_PENDING_STEPS`` steps. The loss mean sums in float64, so it does not depend on how steps
are grouped into updates.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torchmetrics import MeanAbsoluteError, MeanMetric, MeanSquaredError, MetricCollection, R2Score
from torchmetrics.classification import MulticlassAccuracy, MultilabelAccuracy, MultilabelF1Score

from mlplab.errors import TrainingDivergedError

# steps whose outputs may wait for one bulk metric update (bounds the memory they hold)
MAX_PENDING_STEPS = 256


def task_metrics(task: str, num_outputs: int) -> MetricCollection:
    """The metrics of a task, without stage prefix."""
    if task == "multiclass":
        return MetricCollection({"acc": MulticlassAccuracy(num_outputs, average="micro")})
    if task == "multilabel":
        return MetricCollection({"acc": MultilabelAccuracy(num_outputs), "f1": MultilabelF1Score(num_outputs)})
    return MetricCollection({"mse": MeanSquaredError(), "mae": MeanAbsoluteError(), "r2": R2Score(multioutput="uniform_average")})


def _compute_defined(metrics: MetricCollection) -> dict[str, Tensor]:
    """``metrics.compute()``, with NaN for an R² of fewer than two samples (undefined; torchmetrics raises).

    That happens to an epoch of one online-SGD step, such as a ``fast_dev_run`` of ``configs/seeds/linreg_sgd.yaml``.
    """
    undefined = {name for name, metric in metrics.items() if isinstance(metric, R2Score) and int(metric.total) < 2}
    if not undefined:
        return metrics.compute()
    return {name: torch.tensor(float("nan")) if name in undefined else metric.compute() for name, metric in metrics.items()}


class StageMetrics(nn.Module):
    """Mean loss and task metrics of one stage, logged as ``<stage>/loss``, ``<stage>/acc``, …

    Args:
        stage: ``train``, ``val`` or ``test``: the prefix of the logged names.
        task, num_outputs: which metrics (see :func:`task_metrics`).
    """

    def __init__(self, stage: str, task: str, num_outputs: int) -> None:
        super().__init__()
        self.stage, self.task = stage, task
        self.loss = MeanMetric().set_dtype(torch.float64)
        self.metrics = task_metrics(task, num_outputs).clone(prefix=f"{stage}/")
        # per step: loss, batch size, metric input, targets
        self.pending: list[tuple[Tensor, int, Tensor, Tensor]] = []
        self.checked = 0  # leading pending losses already checked finite

    def record(self, loss: Tensor, outputs: Tensor, targets: Tensor) -> int:
        """Keep one step's (detached) loss and outputs for the next bulk update; returns how many steps wait."""
        metric_input = outputs if self.task != "multilabel" else outputs.sigmoid()
        self.pending.append((loss, len(targets), metric_input, targets.int() if self.task == "multilabel" else targets))
        return len(self.pending)

    def check_losses_finite(self, global_step: int, epoch: int, learning_rate: Callable[[], float]) -> None:
        """TrainingDivergedError naming the optimizer step whose loss is not finite (one host sync for every unchecked loss).

        ``global_step`` is the step count after the last recorded loss; ``epoch`` and ``learning_rate()`` go into the message.
        """
        losses = [record[0] for record in self.pending[self.checked :]]
        if not losses:
            return
        finite = torch.isfinite(torch.stack(losses))
        if bool(finite.all()):
            self.checked = len(self.pending)
            return
        first_bad = int((~finite).nonzero()[0])
        step = global_step - len(losses) + first_bad + 1
        raise TrainingDivergedError(
            f"training diverged: the loss became {float(losses[first_bad])} at optimizer step {step} (epoch {epoch}), "
            f"with learning rate {learning_rate():g}. Training stopped; checkpoints written before this epoch's end are untouched and loadable. "
            "Lower model.optimizer.lr, add gradient clipping (--trainer.gradient_clip_val) or check the data."
        )

    def flush(self) -> None:
        """Hand the recorded steps to the metrics in one update."""
        if not self.pending:
            return
        losses, sizes, outputs, targets = zip(*self.pending, strict=True)
        self.loss.update(torch.stack(losses), weight=torch.tensor(sizes, dtype=torch.float64, device=losses[0].device))
        self.metrics.update(torch.cat(outputs), torch.cat(targets))
        self.clear_pending()

    def clear_pending(self) -> None:
        self.pending.clear()
        self.checked = 0

    def compute_and_reset(self) -> dict[str, Tensor]:
        """The stage's values (synchronised across processes by torchmetrics), then a fresh start."""
        self.flush()
        values = {f"{self.stage}/loss": self.loss.compute().float(), **_compute_defined(self.metrics)}
        self.reset()
        return values

    def reset(self) -> None:
        self.clear_pending()
        self.loss.reset()
        self.metrics.reset()

    def resumable(self) -> dict[str, nn.Module]:
        """The metric objects whose sums a mid-epoch checkpoint saves, by the names checkpoints have always used."""
        return {f"{self.stage}_loss": self.loss, **{f"{self.stage}_metrics.{k}": m for k, m in self.metrics.items()}}
