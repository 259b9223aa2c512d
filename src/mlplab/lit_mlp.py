"""``LitMLP``: the LightningModule that trains :class:`mlplab.models.MLP`.

It owns the network, the loss, the torchmetrics metrics and the optimizer/scheduler choice.
Optimizer and scheduler arrive by dependency injection (``OptimizerCallable``,
``LRSchedulerCallable``), so any ``torch.optim`` class is a config value:
``--model.optimizer=SGD --model.optimizer.lr=0.1``.

Inputs are the DataModule's raw batches; the fitted :class:`~mlplab.data.Preprocessor` is the
model's first stage, adopted from the DataModule at ``setup`` and saved in every checkpoint.
The configuration checks live in :mod:`mlplab.model_config`, the bulk metric updates in
:mod:`mlplab.stage_metrics`, the speed path in :mod:`mlplab.grouped`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from lightning.pytorch import Callback
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor
from torchmetrics import MaxMetric, Metric, MinMetric

from mlplab import model_config, stage_metrics
from mlplab.checkpointing import ResumableProgress
from mlplab.data.preprocessing import Preprocessor
from mlplab.grouped import GroupedSteps
from mlplab.models.mlp import MLP
from mlplab.plain_config import make_hyperparameters_plain

Task = Literal["multiclass", "multilabel", "regression"]
# per task: the metric that selects the best epoch, and whether higher is better
HEADLINE_METRIC = {"multiclass": ("acc", "max"), "multilabel": ("acc", "max"), "regression": ("mse", "min")}
STAGES = ("train", "val", "test")


class LitMLP(GroupedSteps, ResumableProgress):
    """An MLP trained for multi-class, multi-label or regression targets.

    Args:
        input_dim: features per sample after pre-processing (linked from ``data.input_dim`` by the CLI).
        num_classes: number of outputs — classes (multiclass), labels (multilabel) or targets
            (regression); linked from ``data.num_classes`` by the CLI.
        hidden_dims, activation, dropout, batch_norm, residual, maxout_pieces, init, init_std,
            bias_init: see :class:`mlplab.models.MLP`.
        task: ``multiclass`` (softmax + cross-entropy, accuracy), ``multilabel`` (a sigmoid per
            label + binary cross-entropy, label accuracy and F1) or ``regression`` (identity
            output + MSE; MSE, MAE and R² metrics).
        label_smoothing: multiclass only: the cross-entropy's target puts ``1 - label_smoothing``
            on the true class and spreads the rest over all classes (``nn.CrossEntropyLoss``'s
            argument; Szegedy et al. 2016). The logged losses include it; accuracy does not change.
        l1, l2: coefficients of ``sum |w|`` and ``sum w^2`` over the weight matrices (not biases or
            norm layers, seed 003) added to the loss; logged as ``train/l1`` and ``train/l2``.
        decay_bias_and_norm: if False, the optimizer's ``weight_decay`` applies to weight matrices
            only: biases and batch-norm parameters go to a parameter group with ``weight_decay=0``.
        optimizer: callable building the optimizer from the parameters; default Adam(lr=1e-3).
        lr_scheduler: callable building a scheduler from the optimizer; default none. Schedulers
            with a ``total_steps`` argument left unset (OneCycleLR, ``mlplab.schedules.WarmupCosineLR``)
            get the fit's number of optimizer steps (:func:`mlplab.model_config.scheduler_total_steps`) and are stepped
            every optimizer step.
        lr_scheduler_interval: ``epoch`` or ``step``: when other schedulers step.
        lr_scheduler_monitor: metric that ReduceLROnPlateau watches.
        steps_per_call: batches per fetch from the train loader. With ``K > 1`` the DataModule serves
            groups of K batches and :class:`mlplab.grouped.GroupedTrainingEpochLoop` steps once per
            batch (:class:`mlplab.grouped.GroupedSteps`): the same updates, ``global_step``, logger
            steps, progress bar and Trainer flags as ``K = 1``, for a fraction of the loop's cost.
            Gradient clipping or accumulation, a subclass overriding ``training_step`` (or another
            automatic-optimization hook) or a worker-process loader take Lightning's own step, with one info line.
        compile: compile the network with ``torch.compile`` when training starts (in place, so
            checkpoints keep their keys and load into an uncompiled model).
    """

    def __init__(
        self,
        input_dim: int = 784,
        num_classes: int = 10,
        hidden_dims: Sequence[int] = (256,),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        residual: bool = False,
        maxout_pieces: int = 2,
        init: str = "default",
        init_std: float = 0.01,
        bias_init: float | None = None,
        task: Task = "multiclass",
        label_smoothing: float = 0.0,
        l1: float = 0.0,
        l2: float = 0.0,
        decay_bias_and_norm: bool = True,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["epoch", "step"] = "epoch",
        lr_scheduler_monitor: str = "val/loss",
        steps_per_call: int = 1,
        compile: bool = False,
    ) -> None:
        super().__init__()
        model_config.check_model_arguments(task, label_smoothing, l1, l2, steps_per_call, optimizer)
        self.save_hyperparameters()
        model_config.store_callables_as_config(self.hparams)
        make_hyperparameters_plain(self.hparams)  # (Hydra's ListConfig/DictConfig: checkpoints stay loadable with weights_only)
        # plain-attribute copies of the hparams read at every optimizer step (an hparams lookup is a few µs there)
        self.task, self.steps_per_call, self.l1, self.l2 = task, steps_per_call, l1, l2
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler
        self.lr_override: float | None = None  # set through `lr` (the learning-rate finder)
        self.scheduler_interval = lr_scheduler_interval
        self.preprocessor = Preprocessor()
        self.net = MLP(
            input_dim, list(hidden_dims), num_classes, activation, dropout, batch_norm, residual, maxout_pieces, init, init_std, bias_init
        )
        self.criterion = model_config.make_criterion(task, label_smoothing)
        self.train_stage, self.val_stage, self.test_stage = (stage_metrics.StageMetrics(stage, task, num_classes) for stage in STAGES)
        self.stages = {"train": self.train_stage, "val": self.val_stage, "test": self.test_stage}
        headline, mode = HEADLINE_METRIC[task]
        self.headline_key = f"val/{headline}"
        self.val_best = MaxMetric() if mode == "max" else MinMetric()
        self.epoch_start_step = 0
        self.grad_norm_every, self.grad_norm_logged_at = 50, -1  # (set per fit; LBFGS calls the hook once per closure)
        self.net_compiled = False

    def forward(self, x: Tensor) -> Tensor:
        """Outputs (logits, or predictions for regression) for raw inputs ``x``, pre-processing included."""
        if not self.preprocessor.is_identity:  # (the network flattens too: the identity's module call is skipped)
            x = self.preprocessor(x)
        return self.net(x)

    def configure_model(self) -> None:
        """Compile the network if asked (``nn.Module.compile`` works in place: state-dict keys do not change)."""
        if self.hparams.compile and not self.net_compiled:
            self.net.compile()
            self.net_compiled = True

    def setup(self, stage: str) -> None:
        """Check the data's task; adopt the DataModule's fitted pre-processing; for fit, decide on grouping (and the release: mlplab.grouped)."""
        datamodule = self.trainer.datamodule if self.trainer else None
        model_config.check_data_fits(self.task, datamodule)
        fitted = getattr(datamodule, "preprocessor", None)
        if isinstance(fitted, Preprocessor) and not self.preprocessor.is_fitted:
            self.preprocessor.load_state_dict(fitted.state_dict())
        if stage == "fit":
            self.start_grouping(datamodule)

    # ----------------------------------------------------------------- the step every stage shares

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> tuple[Tensor, Tensor]:
        """Loss and (detached) outputs of one batch; the outputs wait for the stage's next bulk metric update."""
        x, y = batch
        outputs = self(x)
        y = y if self.task == "multiclass" else y.to(outputs.dtype).view_as(outputs)
        loss = self.criterion(outputs, y)
        detached = outputs.detach()
        waiting = self.stages[stage].record(loss.detach(), detached, y)
        # (training flushes in on_train_batch_end, after its losses were checked finite)
        if stage != "train" and waiting >= stage_metrics.MAX_PENDING_STEPS:
            self.stages[stage].flush()
        return loss, detached

    def training_loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        """The loss one optimizer step minimises on ``batch``: data loss plus weight penalties."""
        loss, _ = self._step(batch, "train")
        for name, penalty in self.net.weight_penalties(self.l1, self.l2).items():
            self.log(f"train/{name}", penalty, on_step=False, on_epoch=True)
            loss = loss + penalty
        return loss

    # ----------------------------------------------------------------- training

    def on_fit_start(self) -> None:
        """Refuse, before the first step, a monitor that is never logged or a plateau schedule without its validation value."""
        self.check_monitored_metrics(self.trainer.callbacks)
        if model_config.scheduler_is_plateau(self.lr_scheduler_factory):
            model_config.check_plateau_gets_validation_every_epoch(
                self.hparams.lr_scheduler_monitor, self.hparams.lr_scheduler_interval, self.trainer.check_val_every_n_epoch
            )

    def on_train_start(self) -> None:
        self.val_best.reset()  # the sanity-check validation must not count towards the best value
        self.prepare_manual_steps()
        self.grad_norm_every, self.grad_norm_logged_at = self.trainer.log_every_n_steps, -1

    def on_train_epoch_start(self) -> None:
        # (not called when a fit resumes mid-epoch: the restored counters and metric sums then carry on)
        self.epoch_start_step = self.global_step
        self.stages["train"].reset()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """The loss of ``batch`` for Lightning's automatic optimization, or the grouped path's own step on it (its detached loss)."""
        if self.automatic_optimization:
            return self.training_loss(batch)
        return self.manual_step(batch)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Log the global L2 norm of the gradients (before any clipping) at every step the logger writes (``log_every_n_steps``)."""
        self.log_grad_norm(self.global_step)

    def log_grad_norm(self, step: int) -> None:
        """``train/grad_norm`` if optimizer ``step`` (about to be taken) is one the logger writes and was not logged yet.

        Lightning writes step metrics after batch ``b`` when ``(b + 1) % log_every_n_steps == 0``; the norm is computed for those steps only.
        """
        if (step + 1) % self.grad_norm_every == 0 and step != self.grad_norm_logged_at:
            self.grad_norm_logged_at = step
            grads = [p.grad for p in self.parameters() if p.grad is not None]
            if grads:
                self.log("train/grad_norm", torch.nn.utils.get_total_norm(grads), on_step=True, on_epoch=False)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # losses are checked finite every steps_per_call steps (one host sync each), and before any validation
        # or checkpoint can see diverged weights (on_validation_start, on_save_checkpoint)
        train = self.stages["train"]
        if len(train.pending) - train.checked >= self.steps_per_call:
            self._check_losses_finite()
        if len(train.pending) >= stage_metrics.MAX_PENDING_STEPS:
            self._check_losses_finite()
            train.flush()

    def _check_losses_finite(self) -> None:
        """Stop with the optimizer step that diverged, before a checkpoint could store non-finite weights."""
        self.stages["train"].check_losses_finite(self.global_step, self.current_epoch, self._learning_rate)

    def _learning_rate(self) -> float:
        return self.trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_epoch_end(self) -> None:
        self._check_losses_finite()
        self._log_stage("train")
        self.log("train/optimizer_steps_per_epoch", float(self.global_step - self.epoch_start_step))
        self.log("train/optimizer_steps", float(self.global_step))
        if not self.automatic_optimization:
            self.step_schedulers("epoch")

    def _log_stage(self, stage: str) -> dict[str, Tensor]:
        """Compute (synchronised across processes by torchmetrics), log and reset the stage's metrics."""
        values = self.stages[stage].compute_and_reset()
        self.log_dict(values, prog_bar=stage != "test")
        return values

    # ----------------------------------------------------------------- validation, test, predict

    def on_validation_start(self) -> None:
        self._check_losses_finite()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        values = self._log_stage("val")
        self.val_best.update(values[self.headline_key])
        best = self.val_best.compute()
        self.log(f"{self.headline_key}_best", best, sync_dist=True)
        self.log("hp_metric", best, sync_dist=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Updates the test metrics; returns the batch's outputs for callbacks (e.g. the confusion matrix)."""
        return self._step(batch, "test")[1]

    def on_test_epoch_end(self) -> None:
        self._log_stage("test")

    def predict_step(self, batch: Tensor | Sequence[Tensor], batch_idx: int) -> Tensor:
        """Class probabilities (multiclass), label probabilities (multilabel) or predictions (regression)."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        outputs = self(x)
        return {"multiclass": lambda o: o.softmax(dim=-1), "multilabel": torch.sigmoid, "regression": lambda o: o}[self.task](outputs)

    # ----------------------------------------------------------------- optimizer and scheduler

    @property
    def lr(self) -> float:
        """The optimizer's learning rate: the injected optimizer's own (its ``lr`` argument or default) unless set here.

        Lightning's learning-rate finder (``Tuner.lr_find``, the ``LearningRateFinder`` callback) reads and sets
        this attribute; :meth:`configure_optimizers` applies it to every parameter group.
        """
        if self.lr_override is not None:
            return self.lr_override
        return model_config.optimizer_learning_rate(self.optimizer_factory)

    @lr.setter
    def lr(self, value: float) -> None:
        self.lr_override = float(value)
        model_config.set_stored_learning_rate(self.hparams, self.lr_override)  # a reloaded checkpoint rebuilds the same optimizer

    def configure_optimizers(self) -> Any:
        """The optimizer (weight decay on every parameter, or on weight matrices only) and the scheduler, if any."""
        optimizer = self.optimizer_factory(model_config.parameter_groups(self, self.hparams.decay_bias_and_norm))
        if self.lr_override is not None:
            for group in optimizer.param_groups:
                group["lr"] = self.lr_override
        self.scheduler_interval = self.hparams.lr_scheduler_interval
        if self.lr_scheduler_factory is None:
            return optimizer
        total_steps = model_config.scheduler_total_steps(self.lr_scheduler_factory, self.trainer)
        if total_steps is not None:  # a schedule over the whole fit steps every optimizer step
            self.scheduler_interval = "step"
        scheduler = self.lr_scheduler_factory(optimizer, **({} if total_steps is None else {"total_steps": total_steps}))
        if not self.automatic_optimization:  # Lightning ignores interval/monitor here; step_schedulers applies them
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler}}
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval, "monitor": self.hparams.lr_scheduler_monitor},
        }

    # ----------------------------------------------------------------- checks and checkpoints

    def logged_metric_names(self) -> set[str]:
        """Every key this module logs during fit: what checkpointing, early stopping and ReduceLROnPlateau may monitor."""
        metric_names = ["loss", *stage_metrics.task_metrics(self.task, self.hparams.num_classes).keys()]
        names = {f"{stage}/{name}" for stage in ("train", "val") for name in metric_names}
        names |= {f"{self.headline_key}_best", "hp_metric", "train/grad_norm", "train/optimizer_steps", "train/optimizer_steps_per_epoch"}
        names |= {f"train/{name}" for name in ("l1", "l2") if getattr(self, name)}
        return names

    def check_monitored_metrics(self, callbacks: Sequence[Callback]) -> None:
        """ConfigError before training when a callback or the scheduler monitors a metric this module never logs."""
        plateau = self.hparams.lr_scheduler_monitor if model_config.scheduler_is_plateau(self.lr_scheduler_factory) else None
        model_config.check_monitored_metrics(callbacks, plateau, self.logged_metric_names())

    def resumable_metrics(self) -> dict[str, Metric]:
        """The metric sums a mid-epoch checkpoint saves (:class:`~mlplab.checkpointing.ResumableProgress`)."""
        return {**self.stages["train"].resumable(), "val_best": self.val_best}

    def before_saving_progress(self) -> None:
        self._check_losses_finite()
        self.stages["train"].flush()  # the metric sums saved must include every step trained so far

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """``nn.Module.load_state_dict`` that names every layer whose shape differs in one clear error."""
        model_config.check_state_dict_fits(self.state_dict(), state_dict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
