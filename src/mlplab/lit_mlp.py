"""``LitMLP``: the LightningModule that trains :class:`mlplab.models.MLP` for classification.

It owns the network, the loss, the torchmetrics metrics and the optimizer/scheduler choice.
Optimizer and scheduler arrive by dependency injection (``OptimizerCallable``,
``LRSchedulerCallable``), so any ``torch.optim`` class is a config value:
``--model.optimizer=SGD --model.optimizer.lr=0.1``.

Inputs are the DataModule's raw batches; the fitted :class:`~mlplab.data.Preprocessor` is the
model's first stage, adopted from the DataModule at ``setup`` and saved in every checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import functools
import inspect

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from mlplab.data.preprocessing import Preprocessor
from mlplab.models.mlp import MLP

# Lightning's own instantiator for hparams given as class_path/init_args (what LightningCLI saves)
_CLI_INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"


def _callable_config(value: Any) -> dict[str, Any] | None:
    """``{"class_path", "init_args"}`` for a class or a keyword-only ``functools.partial`` of one, else None."""
    keywords: dict[str, Any] = {}
    if isinstance(value, functools.partial):
        # functools.partial(Class, **kw), or jsonargparse's partial(wrapper, instantiator, Class, **kw)
        classes = [v for v in (value.func, *value.args) if inspect.isclass(v)]
        if len(classes) != 1:
            return None
        value, keywords = classes[0], dict(value.keywords)
    if inspect.isclass(value):
        return {"class_path": f"{value.__module__}.{value.__qualname__}", "init_args": keywords}
    return None


def _store_callables_as_config(hparams: dict[str, Any]) -> None:
    """Keep checkpoints plain data (loadable with ``torch.load(weights_only=True)``).

    LightningCLI already stores the optimizer/scheduler as ``class_path``/``init_args``; a model
    built in Python holds callables instead. Those are rewritten the same way, and Lightning's CLI
    instantiator rebuilds them in ``load_from_checkpoint``. A callable that cannot be described
    (a lambda) is dropped from the hparams: a reloaded model then uses the default.
    """
    rewritten = False
    for key in ("optimizer", "lr_scheduler"):
        value = hparams.get(key)
        if value is None or isinstance(value, dict):
            continue
        config = _callable_config(value)
        if config is None:
            del hparams[key]
        else:
            hparams[key] = config
        rewritten = True
    if rewritten:
        hparams.setdefault("_instantiator", _CLI_INSTANTIATOR)


class LitMLP(LightningModule):
    """Multi-class classification with an MLP.

    Args:
        input_dim: features per sample after pre-processing (linked from ``data.input_dim`` by the CLI).
        num_classes: number of classes (linked from ``data.num_classes`` by the CLI).
        hidden_dims, activation, dropout, batch_norm, init, init_std, bias_init: see :class:`mlplab.models.MLP`.
        optimizer: callable building the optimizer from the parameters; default Adam(lr=1e-3).
        lr_scheduler: callable building a scheduler from the optimizer; default none.
        lr_scheduler_monitor: metric that ReduceLROnPlateau watches.
    """

    def __init__(
        self,
        input_dim: int = 784,
        num_classes: int = 10,
        hidden_dims: Sequence[int] = (256,),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        init: str = "default",
        init_std: float = 0.01,
        bias_init: float | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_monitor: str = "val/loss",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        _store_callables_as_config(self.hparams)
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.preprocessor = Preprocessor()
        self.net = MLP(input_dim, list(hidden_dims), num_classes, activation, dropout, batch_norm, init, init_std, bias_init)
        self.criterion = nn.CrossEntropyLoss()
        self.train_acc, self.val_acc, self.test_acc = (MulticlassAccuracy(num_classes, average="micro") for _ in range(3))
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.val_acc_best = MaxMetric()

    def forward(self, x: Tensor) -> Tensor:
        """Class logits for raw inputs ``x`` (pre-processing included)."""
        return self.net(self.preprocessor(x))

    def setup(self, stage: str) -> None:
        """Adopt the pre-processing the DataModule fitted on its training split, unless already fitted/restored."""
        fitted = getattr(self.trainer.datamodule, "preprocessor", None) if self.trainer else None
        if isinstance(fitted, Preprocessor) and not self.preprocessor.is_fitted:
            self.preprocessor.load_state_dict(fitted.state_dict())

    def _shared_step(self, batch: tuple[Tensor, Tensor], loss_metric: MeanMetric, acc_metric: MulticlassAccuracy) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = self.criterion(logits, y)
        loss_metric.update(loss.detach(), weight=len(y))
        acc_metric.update(logits.detach(), y)
        return loss

    def on_train_start(self) -> None:
        # the sanity-check validation must not count towards the best accuracy
        self.val_acc_best.reset()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self._shared_step(batch, self.train_loss, self.train_acc)
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, self.val_loss, self.val_acc)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        self.val_acc_best.update(self.val_acc.compute())
        best = self.val_acc_best.compute()
        self.log("val/acc_best", best, sync_dist=True)
        self.log("hp_metric", best, sync_dist=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, self.test_loss, self.test_acc)
        self.log("test/loss", self.test_loss, on_step=False, on_epoch=True)
        self.log("test/acc", self.test_acc, on_step=False, on_epoch=True)

    def predict_step(self, batch: Tensor | Sequence[Tensor], batch_idx: int) -> Tensor:
        """Class probabilities for a batch of inputs (labels, if present, are ignored)."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).softmax(dim=-1)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": self.hparams.lr_scheduler_monitor}}
