"""The checks of ``LitMLP``'s configuration, how its optimizer/scheduler callables become plain hparams, and what they are built with.

Each check raises one :class:`~mlplab.errors.ConfigError` paragraph naming the value, where it
belongs (``model.*``, a callback's ``monitor``, ``trainer.*``) and what is allowed, before any
training starts.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Iterable
from typing import Any

import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from mlplab.errors import ConfigError

TASKS: tuple[str, ...] = ("multiclass", "multilabel", "regression")
# Lightning's own instantiator for hparams given as class_path/init_args (what LightningCLI saves)
CLI_INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"


def callable_target(value: Any) -> tuple[type, dict[str, Any]] | None:
    """The class a factory builds and its keyword arguments, for a class or a keyword ``functools.partial`` of one."""
    if isinstance(value, functools.partial):
        # functools.partial(Class, **kw), or jsonargparse's partial(wrapper, instantiator, Class, **kw)
        classes = [v for v in (value.func, *value.args) if inspect.isclass(v)]
        return (classes[0], dict(value.keywords)) if len(classes) == 1 else None
    return (value, {}) if inspect.isclass(value) else None


def store_callables_as_config(hparams: dict[str, Any]) -> None:
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
        target = callable_target(value)
        if target is None:
            del hparams[key]
        else:
            cls, keywords = target
            hparams[key] = {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": keywords}
        rewritten = True
    if rewritten:
        hparams.setdefault("_instantiator", CLI_INSTANTIATOR)


def optimizer_learning_rate(optimizer_factory: Any) -> float:
    """The learning rate an injected optimizer factory builds with (its ``lr`` argument, or the class's default).

    Read from an optimizer built on one throw-away parameter, so that any factory answers (a class, a
    partial, jsonargparse's callable, a lambda) and a default learning rate counts as the optimizer sets it.
    """
    return float(optimizer_factory([nn.Parameter(torch.zeros(1))]).param_groups[0]["lr"])


def set_stored_learning_rate(hparams: dict[str, Any], lr: float) -> None:
    """Write ``lr`` into the optimizer's stored ``init_args`` (what ``load_from_checkpoint`` rebuilds it from), if stored."""
    stored = hparams.get("optimizer")
    init_args = stored.get("init_args") if isinstance(stored, dict) else getattr(stored, "init_args", None)
    if isinstance(init_args, dict):
        init_args["lr"] = lr
    elif init_args is not None:  # (a jsonargparse Namespace)
        init_args.lr = lr


def check_model_arguments(task: str, label_smoothing: float, l1: float, l2: float, steps_per_call: int, optimizer: Any) -> None:
    """ConfigError for a ``model.*`` value ``LitMLP`` cannot train with."""
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
    target = callable_target(optimizer)
    if target is not None and issubclass(target[0], torch.optim.SparseAdam):
        raise ConfigError(
            "model.optimizer=SparseAdam is not allowed for an MLP: SparseAdam only accepts sparse gradients "
            "(from nn.Embedding(sparse=True)), and Linear layers produce dense ones. Use Adam or AdamW, its dense equivalents."
        )
    if target is not None and "lr" in target[1]:
        lr = float(target[1]["lr"])
        if not (math.isfinite(lr) and lr > 0):
            raise ConfigError(f"model.optimizer.lr={target[1]['lr']} is not allowed; the learning rate must be a positive, finite number.")


def check_data_fits(task: str, datamodule: Any) -> None:
    """ConfigError when the DataModule's task (``multiclass``, ``multilabel``, ``regression``) is not the model's."""
    data_task = getattr(datamodule, "task", None)
    if data_task is not None and data_task != task:
        raise ConfigError(
            f"model.task={task!r} does not fit {type(datamodule).__name__}, a {data_task!r} data set; "
            f"set model.task={data_task!r} or choose another data module."
        )


def scheduler_is_plateau(lr_scheduler_factory: Any) -> bool:
    """Whether the configured scheduler is a ReduceLROnPlateau (it then watches ``lr_scheduler_monitor``)."""
    target = callable_target(lr_scheduler_factory)
    return target is not None and issubclass(target[0], torch.optim.lr_scheduler.ReduceLROnPlateau)


def check_monitored_metrics(callbacks: Iterable[Callback], plateau_monitor: str | None, logged: set[str]) -> None:
    """ConfigError before training when a callback or the scheduler (``plateau_monitor``) watches a metric never logged.

    Only keys in the model's namespaces (``train/``, ``val/``, ``test/``, ``hp_metric``) are checked:
    other keys may come from the user's own callbacks.
    """
    monitored = [(f"{type(c).__name__}(monitor={c.monitor!r})", c.monitor) for c in callbacks if getattr(c, "monitor", None)]
    if plateau_monitor is not None:
        monitored.append((f"model.lr_scheduler_monitor={plateau_monitor!r}", plateau_monitor))
    for owner, key in monitored:
        if key.startswith(("train/", "val/", "test/", "hp_metric")) and key not in logged:
            raise ConfigError(
                f"{owner} watches a metric that is never logged, so it cannot be monitored; logged metrics: {', '.join(sorted(logged))}."
            )


def check_plateau_gets_validation_every_epoch(monitor: str, interval: str, check_val_every_n_epoch: Any) -> None:
    """ConfigError before training when ReduceLROnPlateau watches a ``val/`` metric that some epochs will not have.

    It steps at every epoch end and needs the metric then (Lightning's own path fails at the first epoch
    without validation, with a traceback).
    """
    every = check_val_every_n_epoch
    if monitor.startswith("val/") and isinstance(every, int) and every > 1 and interval == "epoch":
        raise ConfigError(
            f"model.lr_scheduler_monitor={monitor!r} is a validation metric, but trainer.check_val_every_n_epoch={every} "
            "validates only every few epochs while ReduceLROnPlateau steps after every epoch and needs it each time; "
            "set trainer.check_val_every_n_epoch=1 or monitor a train/ metric."
        )


def scheduler_warmup_steps(target: tuple[type, dict[str, Any]]) -> int:
    """A scheduler's ``warmup_steps`` (given, or its class's default), 0 if it has none."""
    parameter = inspect.signature(target[0]).parameters.get("warmup_steps")
    return int(target[1].get("warmup_steps", parameter.default if parameter is not None else 0) or 0)


def takes_total_steps(target: tuple[type, dict[str, Any]] | None) -> bool:
    """Whether a scheduler has a ``total_steps`` argument left unset (OneCycleLR, WarmupCosineLR): the Trainer fills it."""
    return bool(target) and "total_steps" in inspect.signature(target[0]).parameters and target[1].get("total_steps") is None


def make_criterion(task: str, label_smoothing: float) -> nn.Module:
    """The task's loss: cross-entropy (with its label smoothing), binary cross-entropy on logits, or MSE."""
    if task == "multiclass":
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    return {"multilabel": nn.BCEWithLogitsLoss, "regression": nn.MSELoss}[task]()


def scheduler_total_steps(lr_scheduler_factory: Any, trainer: Any) -> int | None:
    """The ``total_steps`` to give a scheduler that takes it unset (the fit's optimizer steps), else None.

    Lightning's ``estimated_stepping_batches`` counts them, grouped or not. Under ``fast_dev_run`` (a smoke
    test of a few steps) a warm-up may outlast the fit: the schedule then gets ``warmup_steps + steps``, with
    an info line, instead of being refused.
    """
    target = callable_target(lr_scheduler_factory)
    if not takes_total_steps(target):
        return None
    steps, warmup_steps = int(trainer.estimated_stepping_batches), scheduler_warmup_steps(target)
    if trainer.fast_dev_run and warmup_steps >= steps:
        rank_zero_info(
            f"mlplab: fast_dev_run: the schedule's {warmup_steps} warm-up steps outlast this {steps}-step run; its total_steps is {warmup_steps + steps}."
        )
        return warmup_steps + steps
    return steps


def parameter_groups(module: nn.Module, decay_bias_and_norm: bool) -> list[dict[str, Any]]:
    """All parameters in one group, or (``decay_bias_and_norm=False``) weight matrices apart from biases/norm parameters (``weight_decay=0``)."""
    if decay_bias_and_norm:
        return [{"params": list(module.parameters())}]
    decay = [p for p in module.parameters() if p.ndim > 1]
    no_decay = [p for p in module.parameters() if p.ndim <= 1]
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def check_state_dict_fits(own: dict[str, Tensor], incoming: dict[str, Tensor]) -> None:
    """ConfigError naming every layer whose shape in a checkpoint's ``incoming`` state differs from the model's ``own``."""
    mismatched = [
        f"{key} is {list(value.shape)} in the checkpoint but {list(own[key].shape)} in this model"
        for key, value in incoming.items()
        if key in own and not key.startswith("preprocessor.") and value.shape != own[key].shape
    ]
    if mismatched:
        raise ConfigError(
            f"the checkpoint does not fit this model's shape: {'; '.join(mismatched)}. "
            "Build the model with the checkpoint's settings: LitMLP.load_from_checkpoint(path) without overrides of "
            "hidden_dims, maxout_pieces, batch_norm, residual or the input size does."
        )
