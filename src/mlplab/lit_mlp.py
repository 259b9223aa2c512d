"""``LitMLP``: the LightningModule that trains :class:`mlplab.models.MLP`.

It owns the network, the loss, the torchmetrics metrics and the optimizer/scheduler choice.
Optimizer and scheduler arrive by dependency injection (``OptimizerCallable``,
``LRSchedulerCallable``), so any ``torch.optim`` class is a config value:
``--model.optimizer=SGD --model.optimizer.lr=0.1``.

Inputs are the DataModule's raw batches; the fitted :class:`~mlplab.data.Preprocessor` is the
model's first stage, adopted from the DataModule at ``setup`` and saved in every checkpoint.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor, nn
from torchmetrics import MaxMetric, Metric, MeanAbsoluteError, MeanMetric, MeanSquaredError, MetricCollection, MinMetric, R2Score
from torchmetrics.classification import MulticlassAccuracy, MultilabelAccuracy, MultilabelF1Score

from mlplab.data.loader import GroupsTrainBatches
from mlplab.data.preprocessing import Preprocessor
from mlplab.errors import ConfigError, TrainingDivergedError
from mlplab.grouped import check_lightning_version, epoch_ran_to_its_end, install_grouped_loop, one_step_per_call_reason
from mlplab.models.mlp import MLP

Task = Literal["multiclass", "multilabel", "regression"]
TASKS: tuple[str, ...] = ("multiclass", "multilabel", "regression")
# per task: the metric that selects the best epoch, and whether higher is better
HEADLINE_METRIC = {"multiclass": ("acc", "max"), "multilabel": ("acc", "max"), "regression": ("mse", "min")}
# steps whose outputs may wait for one bulk metric update (bounds the memory they hold)
MAX_PENDING_STEPS = 256
# what one step hands to the metrics: loss, batch size, metric input, targets
StepRecord = tuple[Tensor, int, Tensor, Tensor]

# Lightning's own instantiator for hparams given as class_path/init_args (what LightningCLI saves)
_CLI_INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"


def _callable_target(value: Any) -> tuple[type, dict[str, Any]] | None:
    """The class a factory builds and its keyword arguments, for a class or a keyword ``functools.partial`` of one."""
    if isinstance(value, functools.partial):
        # functools.partial(Class, **kw), or jsonargparse's partial(wrapper, instantiator, Class, **kw)
        classes = [v for v in (value.func, *value.args) if inspect.isclass(v)]
        return (classes[0], dict(value.keywords)) if len(classes) == 1 else None
    return (value, {}) if inspect.isclass(value) else None


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
        target = _callable_target(value)
        if target is None:
            del hparams[key]
        else:
            cls, keywords = target
            hparams[key] = {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": keywords}
        rewritten = True
    if rewritten:
        hparams.setdefault("_instantiator", _CLI_INSTANTIATOR)


def _task_metrics(task: str, num_outputs: int) -> MetricCollection:
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


class LitMLP(LightningModule):
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
            get the fit's number of optimizer steps (:meth:`total_optimizer_steps`) and are stepped
            every optimizer step.
        lr_scheduler_interval: ``epoch`` or ``step``: when other schedulers step.
        lr_scheduler_monitor: metric that ReduceLROnPlateau watches.
        steps_per_call: batches per fetch from the train loader. Lightning's loop costs about as
            much per batch as a small MLP's step; with ``K > 1`` the DataModule serves groups of K
            consecutive batches and :class:`mlplab.grouped.GroupedTrainingEpochLoop` steps once per
            batch under this module's own (manual) optimization: the same batches, updates,
            scheduler steps, ``global_step``, logger steps, progress bar and Trainer flags as
            ``K = 1``, for a fraction of the loop's cost. Trainer gradient clipping or accumulation,
            a subclass overriding ``training_step`` (or another hook only automatic optimization
            calls) and a worker-process DataLoader make it take Lightning's own step per batch,
            with one info line saying so.
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
        if steps_per_call < 1:
            raise ConfigError(f"model.steps_per_call={steps_per_call} is not allowed; it must be a positive integer.")
        if task not in TASKS:
            raise ConfigError(f"model.task={task!r} is not allowed; choose one of {', '.join(TASKS)}.")
        if not 0 <= label_smoothing < 1 or (label_smoothing and task != "multiclass"):
            raise ConfigError(
                f"model.label_smoothing={label_smoothing} is not allowed with model.task={task!r}; "
                "it must be in [0, 1), and non-zero only for task multiclass."
            )
        if l1 < 0 or l2 < 0:
            raise ConfigError(f"model.l1={l1} and model.l2={l2} must be >= 0.")
        target = _callable_target(optimizer)
        if target is not None and issubclass(target[0], torch.optim.SparseAdam):
            raise ConfigError(
                "model.optimizer=SparseAdam is not allowed for an MLP: SparseAdam only accepts sparse gradients "
                "(from nn.Embedding(sparse=True)), and Linear layers produce dense ones. Use Adam or AdamW, its dense equivalents."
            )
        if target is not None and "lr" in target[1]:
            lr = float(target[1]["lr"])
            if not (math.isfinite(lr) and lr > 0):
                raise ConfigError(f"model.optimizer.lr={target[1]['lr']} is not allowed; the learning rate must be a positive, finite number.")
        self.save_hyperparameters()
        _store_callables_as_config(self.hparams)
        # plain-attribute copies of the hparams read at every optimizer step (an hparams lookup is a few µs there)
        self.task, self.steps_per_call, self.l1, self.l2 = task, steps_per_call, l1, l2
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.preprocessor = Preprocessor()
        self.net = MLP(
            input_dim, list(hidden_dims), num_classes, activation, dropout, batch_norm, residual, maxout_pieces, init, init_std, bias_init
        )
        self.criterion: nn.Module = (
            nn.CrossEntropyLoss(label_smoothing=label_smoothing)
            if task == "multiclass"
            else {"multilabel": nn.BCEWithLogitsLoss, "regression": nn.MSELoss}[task]()
        )
        self.train_metrics, self.val_metrics, self.test_metrics = (
            _task_metrics(task, num_classes).clone(prefix=f"{stage}/") for stage in ("train", "val", "test")
        )
        # float64 sums: the mean does not depend on how batches are grouped into updates (see steps_per_call)
        self.train_loss, self.val_loss, self.test_loss = (MeanMetric().set_dtype(torch.float64) for _ in range(3))
        headline, mode = HEADLINE_METRIC[task]
        self.headline_key = f"val/{headline}"
        self.val_best = MaxMetric() if mode == "max" else MinMetric()
        self.epoch_start_step = 0
        self.scheduler_interval = lr_scheduler_interval
        self.pending_outputs: dict[str, list[StepRecord]] = {"train": [], "val": [], "test": []}
        self.pending_losses_checked = 0  # leading pending training losses already checked finite
        self.grad_norm_logged_at = -1  # global_step of the latest train/grad_norm (LBFGS calls the hook per closure)
        self.plain_backward = False
        self.plain_optimizer_step = False
        self.own_before_optimizer_step = True  # (set per fit in on_train_start, with grad_norm_every)
        self.grad_norm_every = 50
        self.net_compiled = False
        self.grouped_steps = False  # decided per fit in setup(): several batches per fetch, one optimizer step each

    @property
    def automatic_optimization(self) -> bool:
        """False while this fit takes its optimizer steps through the grouped loop (``steps_per_call > 1``, see :meth:`setup`)."""
        return self._automatic_optimization and not self.grouped_steps

    @automatic_optimization.setter
    def automatic_optimization(self, value: bool) -> None:
        self._automatic_optimization = value

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
        """Check Lightning's release and that the task fits the data; adopt the DataModule's fitted pre-processing unless already fitted/restored."""
        check_lightning_version()
        datamodule = self.trainer.datamodule if self.trainer else None
        self.check_data_fits(datamodule)
        fitted = getattr(datamodule, "preprocessor", None)
        if isinstance(fitted, Preprocessor) and not self.preprocessor.is_fitted:
            self.preprocessor.load_state_dict(fitted.state_dict())
        if stage == "fit":
            self.grouped_steps = self.steps_per_call > 1 and self._group_batches(datamodule)

    def _group_batches(self, datamodule: Any) -> bool:
        """Whether this fit can serve ``steps_per_call`` batches per fetch; if not, one info line says why."""
        groups = isinstance(datamodule, GroupsTrainBatches)
        reason = one_step_per_call_reason(self, self.trainer, LitMLP)
        if reason is None and not (groups and datamodule.group_train_batches(self.steps_per_call)):
            reason = f"{type(datamodule).__name__} does not serve groups of batches (an mlplab DataModule with num_workers=0 does)"
        if reason is not None:
            if groups:
                datamodule.group_train_batches(1)
            rank_zero_info(f"mlplab: Lightning's own step per batch (model.steps_per_call={self.steps_per_call} not used): {reason}.")
            return False
        install_grouped_loop(self.trainer)
        return True

    def check_data_fits(self, datamodule: Any) -> None:
        """ConfigError when the DataModule's task (``multiclass``, ``multilabel``, ``regression``) is not this model's."""
        data_task = getattr(datamodule, "task", None)
        if data_task is not None and data_task != self.task:
            raise ConfigError(
                f"model.task={self.task!r} does not fit {type(datamodule).__name__}, a {data_task!r} data set; "
                f"set model.task={data_task!r} or choose another data module."
            )

    def _targets(self, y: Tensor, outputs: Tensor) -> Tensor:
        return y if self.task == "multiclass" else y.to(outputs.dtype).view_as(outputs)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> tuple[Tensor, Tensor]:
        """Loss and (detached) outputs of one batch; the outputs go to the stage's metrics (logged once per epoch: self.log is costly).

        Outputs are buffered and handed to the metrics in bulk (:meth:`_flush_outputs`: at the epoch's
        end, before a checkpoint, or every ``MAX_PENDING_STEPS`` steps): a torchmetrics update costs
        as much as a small MLP's step, and these metrics are additive over batches.
        """
        x, y = batch
        outputs = self(x)
        y = self._targets(y, outputs)
        loss = self.criterion(outputs, y)
        detached = outputs.detach()
        metric_input = detached if self.task != "multilabel" else detached.sigmoid()
        record = (loss.detach(), len(y), metric_input, y.int() if self.task == "multilabel" else y)
        pending = self.pending_outputs[stage]
        pending.append(record)
        # (training flushes between calls, in on_train_batch_end, after its losses were checked)
        if stage != "train" and len(pending) >= MAX_PENDING_STEPS:
            self._flush_outputs(stage)
        return loss, detached

    def _flush_outputs(self, stage: str) -> None:
        """Hand the stage's buffered step outputs to its metrics in one update (training losses checked finite first)."""
        pending = self.pending_outputs[stage]
        if not pending:
            return
        if stage == "train":
            self._check_pending_losses()
        losses, sizes, outputs, targets = zip(*pending, strict=True)
        getattr(self, f"{stage}_loss").update(torch.stack(losses), weight=torch.tensor(sizes, dtype=torch.float64, device=losses[0].device))
        getattr(self, f"{stage}_metrics").update(torch.cat(outputs), torch.cat(targets))
        self._clear_pending(stage)

    def _clear_pending(self, stage: str) -> None:
        """Forget the stage's buffered step outputs (for training, also how many were checked finite)."""
        self.pending_outputs[stage].clear()
        if stage == "train":
            self.pending_losses_checked = 0

    def _check_pending_losses(self) -> None:
        """Check the training losses buffered since the last check (once per call: one host sync, not one per step)."""
        pending = self.pending_outputs["train"]
        if len(pending) > self.pending_losses_checked:
            self._check_finite([record[0] for record in pending[self.pending_losses_checked :]])
            self.pending_losses_checked = len(pending)

    def _check_finite(self, losses: list[Tensor]) -> None:
        """Stop with the step that diverged, before a checkpoint could store non-finite weights.

        Checked once per call (one host sync), not per step; checkpoints are written after the
        epoch's last call, so the last good ones stay as they were.
        """
        finite = torch.isfinite(torch.stack(losses))
        if bool(finite.all()):
            return
        first_bad = int((~finite).nonzero()[0])
        step = self.global_step - len(losses) + first_bad + 1
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        raise TrainingDivergedError(
            f"training diverged: the loss became {float(losses[first_bad])} at optimizer step {step} (epoch {self.current_epoch}), "
            f"with learning rate {lr:g}. Training stopped; checkpoints written before this epoch's end are untouched and loadable. "
            "Lower model.optimizer.lr, add gradient clipping (--trainer.gradient_clip_val) or check the data."
        )

    def _log_epoch_metrics(self, stage: str) -> dict[str, Tensor]:
        """Compute (synchronised across processes by torchmetrics), log and reset the stage's metrics."""
        self._flush_outputs(stage)
        loss_metric, metrics = getattr(self, f"{stage}_loss"), getattr(self, f"{stage}_metrics")
        values = {f"{stage}/loss": loss_metric.compute().float(), **_compute_defined(metrics)}
        loss_metric.reset()
        metrics.reset()
        self.log_dict(values, prog_bar=stage != "test")
        return values

    def weight_penalties(self) -> dict[str, Tensor]:
        """``l1 * sum|w|`` and ``l2 * sum w^2`` over weight matrices, for the coefficients that are non-zero."""
        if not (self.l1 or self.l2):
            return {}
        weights = [p for p in self.net.parameters() if p.ndim > 1]
        penalties = {}
        if self.l1:
            penalties["l1"] = self.l1 * sum(w.abs().sum() for w in weights)
        if self.l2:
            penalties["l2"] = self.l2 * sum(w.pow(2).sum() for w in weights)
        return penalties

    def logged_metric_names(self) -> set[str]:
        """Every key this module logs during fit: what checkpointing, early stopping and ReduceLROnPlateau may monitor."""
        metric_names = ["loss", *_task_metrics(self.task, self.hparams.num_classes).keys()]
        names = {f"{stage}/{name}" for stage in ("train", "val") for name in metric_names}
        names |= {f"{self.headline_key}_best", "hp_metric", "train/grad_norm", "train/optimizer_steps", "train/optimizer_steps_per_epoch"}
        names |= {f"train/{name}" for name in ("l1", "l2") if getattr(self, name)}
        return names

    def _scheduler_is_plateau(self) -> bool:
        """Whether the configured scheduler is a ReduceLROnPlateau (it then watches ``lr_scheduler_monitor``)."""
        target = _callable_target(self.lr_scheduler_factory)
        return target is not None and issubclass(target[0], torch.optim.lr_scheduler.ReduceLROnPlateau)

    def check_monitored_metrics(self, callbacks: Sequence[Callback]) -> None:
        """ConfigError before training when a callback or the scheduler monitors a metric this module never logs.

        Only keys in this module's namespaces (``train/``, ``val/``, ``hp_metric``) are checked: other
        keys may come from the user's own callbacks.
        """
        monitored = [(f"{type(c).__name__}(monitor={c.monitor!r})", c.monitor) for c in callbacks if getattr(c, "monitor", None)]
        if self._scheduler_is_plateau():
            monitored.append((f"model.lr_scheduler_monitor={self.hparams.lr_scheduler_monitor!r}", self.hparams.lr_scheduler_monitor))
        logged = self.logged_metric_names()
        for owner, key in monitored:
            if key.startswith(("train/", "val/", "test/", "hp_metric")) and key not in logged:
                raise ConfigError(f"{owner} watches a metric that is never logged, so it cannot be monitored; logged metrics: {', '.join(sorted(logged))}.")

    def on_fit_start(self) -> None:
        self.check_monitored_metrics(self.trainer.callbacks)
        self.check_plateau_gets_validation_every_epoch()

    def check_plateau_gets_validation_every_epoch(self) -> None:
        """ConfigError before training when ReduceLROnPlateau watches a ``val/`` metric that some epochs will not have.

        It steps at every epoch end and needs the metric then (Lightning's own path fails at the first epoch
        without validation, with a traceback).
        """
        every = self.trainer.check_val_every_n_epoch
        monitor = self.hparams.lr_scheduler_monitor
        if not self._scheduler_is_plateau() or not monitor.startswith("val/"):
            return
        if isinstance(every, int) and every > 1 and self.hparams.lr_scheduler_interval == "epoch":
            raise ConfigError(
                f"model.lr_scheduler_monitor={monitor!r} is a validation metric, but trainer.check_val_every_n_epoch={every} "
                "validates only every few epochs while ReduceLROnPlateau steps after every epoch and needs it each time; "
                "set trainer.check_val_every_n_epoch=1 or monitor a train/ metric."
            )

    def on_train_start(self) -> None:
        # the sanity-check validation must not count towards the best value
        self.val_best.reset()
        self.plain_backward = not self._backward_needs_lightning()
        self.plain_optimizer_step = not self._optimizer_step_needs_lightning()
        self.own_before_optimizer_step = type(self).on_before_optimizer_step is LitMLP.on_before_optimizer_step
        self.grad_norm_every = self.trainer.log_every_n_steps
        self.grad_norm_logged_at = -1

    def on_train_epoch_start(self) -> None:
        # (not called when a fit resumes mid-epoch: the restored counters and metric sums then carry on)
        self.epoch_start_step = self.global_step
        self._clear_pending("train")
        self.train_loss.reset()
        self.train_metrics.reset()

    def _resumable_metrics(self) -> dict[str, Metric]:
        return {"train_loss": self.train_loss, "val_best": self.val_best, **{f"train_metrics.{k}": m for k, m in self.train_metrics.items()}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Save what a resumed fit needs to continue exactly: RNG state, this epoch's metric sums, step counters.

        All tensors and plain numbers, so checkpoints stay loadable with ``torch.load(weights_only=True)``.
        """
        self._flush_outputs("train")  # the metric sums saved must include every step trained so far
        metric_states = {}
        for name, metric in self._resumable_metrics().items():
            metric.persistent(True)
            metric_states[name] = dict(metric.state_dict())
            metric.persistent(False)
        checkpoint["mlplab_progress"] = {
            "torch_rng_state": torch.get_rng_state(),
            "cuda_rng_states": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
            "epoch_start_step": self.epoch_start_step,
            "metric_states": metric_states,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """When a fit resumes (not when a model is merely loaded), restore what :meth:`on_save_checkpoint` saved."""
        progress = checkpoint.get("mlplab_progress")
        if progress is None or self._trainer is None or self.trainer.state.fn != "fit":
            return
        torch.set_rng_state(progress["torch_rng_state"])
        if progress["cuda_rng_states"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(progress["cuda_rng_states"])
        self.epoch_start_step = progress["epoch_start_step"]
        for name, metric in self._resumable_metrics().items():
            metric.persistent(True)
            metric.load_state_dict(progress["metric_states"][name])
            metric.persistent(False)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """``nn.Module.load_state_dict`` that names every layer whose shape differs in one clear error."""
        own = self.state_dict()
        mismatched = [
            f"{key} is {list(value.shape)} in the checkpoint but {list(own[key].shape)} in this model"
            for key, value in state_dict.items()
            if key in own and not key.startswith("preprocessor.") and value.shape != own[key].shape
        ]
        if mismatched:
            raise ConfigError(
                f"the checkpoint does not fit this model's shape: {'; '.join(mismatched)}. "
                "Build the model with the checkpoint's settings: LitMLP.load_from_checkpoint(path) without overrides of "
                "hidden_dims, maxout_pieces, batch_norm, residual or the input size does."
            )
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def training_loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        """The loss one optimizer step minimises on ``batch``: data loss plus weight penalties."""
        loss, _ = self._step(batch, "train")
        for name, penalty in self.weight_penalties().items():
            self.log(f"train/{name}", penalty, on_step=False, on_epoch=True)
            loss = loss + penalty
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor | None:
        """One optimizer step on ``batch``: Lightning's automatic optimization, or this module's own when grouped (``steps_per_call > 1``)."""
        if self.automatic_optimization:
            return self.training_loss(batch)
        optimizer = self.optimizers()
        closure = functools.partial(self._closure, optimizer, batch)
        if self.plain_optimizer_step:
            self._plain_optimizer_step(optimizer, closure, self.global_step)
        else:
            optimizer.step(closure=closure)
        self._step_schedulers("step")
        return None

    def _plain_optimizer_step(self, optimizer: LightningOptimizer, closure: Any, step: int) -> None:
        """What ``LightningOptimizer.step`` does on one device in fp32/bf16 when no callback hooks the step.

        Lightning's path (strategy → precision plugin → ``on_before_optimizer_step`` for every
        callback) costs about 40 µs per step, a tenth of a small MLP's step. This keeps its effects:
        the manual loop's step counter (``global_step``) through the optimizer's before/after
        callbacks, and this module's ``on_before_optimizer_step`` between backward and update (its
        grad-norm logging told the ``step`` being taken, unless a subclass overrides the hook).
        """

        def closure_then_hook() -> Tensor:
            loss = closure()
            if self.own_before_optimizer_step:
                self._log_grad_norm(step)
            else:
                self.on_before_optimizer_step(optimizer)
            return loss

        optimizer._on_before_step()
        optimizer.optimizer.step(closure=closure_then_hook)
        optimizer._on_after_step()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # losses are checked finite every steps_per_call steps (one host sync each), and before any validation
        # or checkpoint can see diverged weights (on_validation_start, on_save_checkpoint)
        pending = len(self.pending_outputs["train"])
        if pending - self.pending_losses_checked >= self.steps_per_call:
            self._check_pending_losses()
        if pending >= MAX_PENDING_STEPS:
            self._flush_outputs("train")

    def on_validation_start(self) -> None:
        self._check_pending_losses()

    def _closure(self, optimizer: Any, batch: tuple[Tensor, Tensor]) -> Tensor:
        # what Lightning's automatic optimization does per step: zero_grad, forward, backward
        optimizer.zero_grad()
        loss = self.training_loss(batch)
        if self.plain_backward:
            loss.backward()
        else:
            self.manual_backward(loss)
        return loss

    def _backward_needs_lightning(self) -> bool:
        """Whether ``manual_backward`` does more than ``loss.backward()`` in this run.

        It dispatches ``on_before_backward``/``on_after_backward`` to every callback and the module
        (about 0.2 ms per step with the default callbacks, as much as a small MLP's step), scales
        the loss when the precision plugin has a gradient scaler (fp16), and prepares DDP's
        reducer. When no hook is overridden, there is no scaler and one device, both are the
        same computation, and the plain call is used.
        """
        hooks = ("on_before_backward", "on_after_backward")
        trainer = self.trainer
        return (
            not isinstance(trainer.strategy, SingleDeviceStrategy)
            or getattr(trainer.precision_plugin, "scaler", None) is not None
            or any(is_overridden(hook, self, LightningModule) for hook in hooks)
            or any(is_overridden(hook, callback, Callback) for callback in trainer.callbacks for hook in hooks)
        )

    def _optimizer_step_needs_lightning(self) -> bool:
        """Whether ``LightningOptimizer.step`` does more than :meth:`_plain_optimizer_step` in this run.

        It does when training is distributed, when the precision plugin is not the fp32/bf16 one
        without gradient scaler (fp16 scales and unscales, others wrap the step), or when a
        callback overrides ``on_before_optimizer_step``.
        """
        trainer = self.trainer
        plugin = trainer.precision_plugin
        return (
            not isinstance(trainer.strategy, SingleDeviceStrategy)
            or type(plugin) not in (Precision, MixedPrecision)
            or getattr(plugin, "scaler", None) is not None
            or any(is_overridden("on_before_optimizer_step", callback, Callback) for callback in trainer.callbacks)
        )

    def _step_schedulers(self, interval: str) -> None:
        """Step the scheduler if it runs per ``interval``, as Lightning does under automatic optimization.

        (Under manual optimization Lightning keeps no interval or monitor: this module remembers them.)
        """
        if self.scheduler_interval != interval:  # (checked first: this runs every optimizer step)
            return
        scheduler = self.lr_schedulers()
        if scheduler is None:
            return
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            monitor = self.hparams.lr_scheduler_monitor
            value = self.trainer.callback_metrics.get(monitor)
            if value is None:
                raise ConfigError(
                    f"model.lr_scheduler_monitor={monitor!r} has no value at the end of epoch {self.current_epoch}, when "
                    "ReduceLROnPlateau steps (no validation has run yet); metrics logged so far: "
                    f"{', '.join(sorted(self.trainer.callback_metrics)) or 'none'}."
                )
            scheduler.step(value)
        else:
            scheduler.step()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Log the global L2 norm of the gradients (before any clipping) at every optimizer step the logger writes (``log_every_n_steps``)."""
        self._log_grad_norm(self.global_step)

    def _log_grad_norm(self, step: int) -> None:
        """``train/grad_norm`` if optimizer ``step`` (about to be taken) is one the logger writes and was not logged yet (LBFGS re-evaluates).

        Lightning writes step metrics after batch ``b`` when ``(b + 1) % log_every_n_steps == 0``; the norm is computed for those steps only.
        """
        if (step + 1) % self.grad_norm_every == 0 and step != self.grad_norm_logged_at:
            self.grad_norm_logged_at = step
            grads = [p.grad for p in self.parameters() if p.grad is not None]
            if grads:
                self.log("train/grad_norm", torch.nn.utils.get_total_norm(grads), on_step=True, on_epoch=False)

    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics("train")
        self.log("train/optimizer_steps_per_epoch", float(self.global_step - self.epoch_start_step))
        self.log("train/optimizer_steps", float(self.global_step))
        if not self.automatic_optimization and epoch_ran_to_its_end(self.trainer):
            self._step_schedulers("epoch")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        values = self._log_epoch_metrics("val")
        self.val_best.update(values[self.headline_key])
        best = self.val_best.compute()
        self.log(f"{self.headline_key}_best", best, sync_dist=True)
        self.log("hp_metric", best, sync_dist=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Updates the test metrics; returns the batch's outputs for callbacks (e.g. the confusion matrix)."""
        return self._step(batch, "test")[1]

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def predict_step(self, batch: Tensor | Sequence[Tensor], batch_idx: int) -> Tensor:
        """Class probabilities (multiclass), label probabilities (multilabel) or predictions (regression)."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        outputs = self(x)
        return {"multiclass": lambda o: o.softmax(dim=-1), "multilabel": torch.sigmoid, "regression": lambda o: o}[self.task](outputs)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """All parameters in one group, or (``decay_bias_and_norm=False``) weight matrices apart from biases/norm parameters."""
        if self.hparams.decay_bias_and_norm:
            return [{"params": list(self.parameters())}]
        decay = [p for p in self.parameters() if p.ndim > 1]
        no_decay = [p for p in self.parameters() if p.ndim <= 1]
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]

    def total_optimizer_steps(self, warmup_steps: int = 0) -> int:
        """Optimizer steps the whole fit will take (Lightning's ``estimated_stepping_batches``, grouped or not).

        Under ``fast_dev_run`` (a smoke test of a few steps) a schedule's warm-up may be longer than the
        fit: the schedule then gets ``warmup_steps + steps``, with an info line, instead of being refused.
        """
        steps = int(self.trainer.estimated_stepping_batches)
        if self.trainer.fast_dev_run and warmup_steps >= steps:
            rank_zero_info(f"mlplab: fast_dev_run: the schedule's {warmup_steps} warm-up steps outlast this {steps}-step run; its total_steps is {warmup_steps + steps}.")
            return warmup_steps + steps
        return steps

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameter_groups())
        self.scheduler_interval = self.hparams.lr_scheduler_interval
        if self.lr_scheduler_factory is None:
            return optimizer
        extra = {}
        target = _callable_target(self.lr_scheduler_factory)
        if target and "total_steps" in inspect.signature(target[0]).parameters and target[1].get("total_steps") is None:
            warmup = inspect.signature(target[0]).parameters.get("warmup_steps")
            warmup_steps = int(target[1].get("warmup_steps", warmup.default if warmup is not None else 0) or 0)
            extra, self.scheduler_interval = {"total_steps": self.total_optimizer_steps(warmup_steps)}, "step"
        scheduler = self.lr_scheduler_factory(optimizer, **extra)
        if not self.automatic_optimization:  # Lightning ignores interval/monitor here; _step_schedulers applies them
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler}}
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval, "monitor": self.hparams.lr_scheduler_monitor},
        }
