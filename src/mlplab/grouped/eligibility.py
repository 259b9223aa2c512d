"""The one place that decides whether a fit may take the speed path (:func:`one_step_per_call_reason`).

The speed path runs only when everything in the fit is known to behave on it exactly as on
Lightning's own automatic-optimization step; anything else gets Lightning's step, with one info
line naming what decided. "Known" means:

- **callbacks**: each callback is a class of :data:`VERIFIED_CALLBACKS` (checked, by
  ``tests/test_lightning_matrix.py``, to give bit-identical weights, steps, batches and logged
  values either way), or a subclass of one (or of ``Callback``) that overrides only observing
  hooks: per-batch, epoch, stage, checkpoint and state hooks. A callback that overrides one of
  :data:`CALLBACK_OPTIMIZATION_HOOKS` (the optimization hooks, and ``on_fit_start``, where
  Lightning's own tuners run their search loops and swap the optimizer's scheduler) is not known,
  whatever it does, and neither is a Lightning callback outside the table;
- **the module**: it keeps the optimization hooks of the class that mixed in ``GroupedSteps``;
- **strategy and precision**: exactly the classes in :data:`VERIFIED_STRATEGIES` and
  :data:`VERIFIED_PRECISIONS` (fp16's gradient scaler is not among them);
- **Trainer flags**: no gradient clipping, no gradient accumulation.

A callback that changes ``accumulate_grad_batches`` during the fit from an observing hook is
caught at the next epoch start by :class:`~mlplab.grouped.loop.GroupedTrainingEpochLoop`.
"""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.model_helpers import is_overridden

# Lightning calls these only under automatic optimization (or around its step): a module overriding one
# relies on Lightning's own step. (on_before_optimizer_step and the backward hooks run on the speed path
# too, but an override is the user's optimization code: it gets the step it was written against.)
MODULE_OPTIMIZATION_HOOKS = (
    "training_step",
    "optimizer_step",
    "optimizer_zero_grad",
    "backward",
    "configure_gradient_clipping",
    "lr_scheduler_step",
    "on_before_zero_grad",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
)
# a callback hook that changes how steps are taken, or where Lightning's tuners replace the loop's optimizer,
# scheduler and callbacks (LearningRateFinder, BatchSizeFinder, BaseFinetuning all act in on_fit_start)
CALLBACK_OPTIMIZATION_HOOKS = ("on_before_zero_grad", "on_before_backward", "on_after_backward", "on_before_optimizer_step", "on_fit_start")

# callback classes verified row by row in tests/test_lightning_matrix.py (named by import path, so that optional
# packages are not imported here); a subclass may add observing hooks
VERIFIED_CALLBACKS = frozenset(
    {
        "lightning.pytorch.callbacks.callback.Callback",
        "lightning.pytorch.callbacks.batch_size_finder.BatchSizeFinder",
        "lightning.pytorch.callbacks.device_stats_monitor.DeviceStatsMonitor",
        "lightning.pytorch.callbacks.early_stopping.EarlyStopping",
        "lightning.pytorch.callbacks.lambda_function.LambdaCallback",  # (the hooks it is given are checked like a subclass's)
        "lightning.pytorch.callbacks.lr_monitor.LearningRateMonitor",
        "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint",
        "lightning.pytorch.callbacks.model_summary.ModelSummary",
        "lightning.pytorch.callbacks.rich_model_summary.RichModelSummary",
        "lightning.pytorch.callbacks.on_exception_checkpoint.OnExceptionCheckpoint",
        "lightning.pytorch.callbacks.progress.tqdm_progress.TQDMProgressBar",
        "lightning.pytorch.callbacks.progress.rich_progress.RichProgressBar",
        "lightning.pytorch.callbacks.pruning.ModelPruning",
        "lightning.pytorch.callbacks.spike.SpikeDetection",
        "lightning.pytorch.callbacks.stochastic_weight_avg.StochasticWeightAveraging",
        "lightning.pytorch.callbacks.throughput_monitor.ThroughputMonitor",
        "lightning.pytorch.callbacks.timer.Timer",
        "lightning.pytorch.callbacks.weight_averaging.EMAWeightAveraging",
        "lightning.pytorch.callbacks.weight_averaging.WeightAveraging",
        # acts in predict only (mlplab's CSVPredictionWriter, a CLI default, is one)
        "lightning.pytorch.callbacks.prediction_writer.BasePredictionWriter",
        # LightningCLI's: writes the run's config.yaml in setup (every `mlplab fit` has it: tests/test_e2e.py)
        "lightning.pytorch.cli.SaveConfigCallback",
        "mlplab.callbacks.LayerGradientNorms",
        "mlplab.dashboard.CustomScalarsLayout",  # on_fit_start: writes a TensorBoard layout
        "mlplab.callbacks.FusedEMAWeightAveraging",
        # mlplab tune's pruning callback: on_fit_start only checks the study's storage
        "optuna_integration.pytorch_lightning.pytorch_lightning.PyTorchLightningPruningCallback",
    }
)
VERIFIED_STRATEGIES = frozenset(
    {
        "lightning.pytorch.strategies.single_device.SingleDeviceStrategy",
        # tests/test_ddp.py: two gloo processes end where one process at twice the batch ends
        "lightning.pytorch.strategies.ddp.DDPStrategy",
    }
)
VERIFIED_PRECISIONS = frozenset(
    {
        "lightning.pytorch.plugins.precision.precision.Precision",  # 32-true
        "lightning.pytorch.plugins.precision.amp.MixedPrecision",  # bf16-mixed (fp16-mixed has a scaler: refused below)
        "lightning.pytorch.plugins.precision.half.HalfPrecision",  # bf16-true, 16-true
        "lightning.pytorch.plugins.precision.double.DoublePrecision",  # 64-true
    }
)


def import_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def unknown_callback_reason(callback: Callback) -> str | None:
    """None if ``callback`` is known to behave the same on the speed path, else what makes it unknown.

    Its nearest verified class in the MRO is the reference: hooks overridden relative to it must all observe.
    Lightning's own callbacks are known only when verified (GradientAccumulationScheduler changes the steps
    from observing hooks: on_train_start and on_train_epoch_start).
    """
    name = type(callback).__name__
    for verified in type(callback).__mro__:
        if import_path(verified) in VERIFIED_CALLBACKS:
            break
        if verified.__module__.startswith(("lightning.", "pytorch_lightning.")):
            return f"the callback {name} is (or extends) Lightning's {verified.__name__}, which the speed path is not verified with"
    changed = [hook for hook in CALLBACK_OPTIMIZATION_HOOKS if is_overridden(hook, callback, verified)]
    return f"the callback {name} overrides {', '.join(changed)}, which may change how steps are taken" if changed else None


def one_step_per_call_reason(module: LightningModule, trainer: Trainer, base: type[LightningModule]) -> str | None:
    """Why this fit must take Lightning's own automatic-optimization step per batch, or None if the speed path is proven the same.

    ``base`` is the module class whose hooks the speed path implements.
    """
    if trainer.gradient_clip_val:
        return f"Trainer gradient clipping (gradient_clip_val={trainer.gradient_clip_val}) runs under automatic optimization only"
    if trainer.accumulate_grad_batches != 1:
        return f"accumulate_grad_batches={trainer.accumulate_grad_batches} runs under automatic optimization only"
    overridden = [hook for hook in MODULE_OPTIMIZATION_HOOKS if is_overridden(hook, module, base)]
    if overridden:
        return f"{type(module).__name__} overrides {', '.join(overridden)}, which Lightning calls around its own optimizer step"
    strategy, plugin = type(trainer.strategy), trainer.precision_plugin
    if import_path(strategy) not in VERIFIED_STRATEGIES:  # (a subclass may change any step of the strategy)
        return f"the strategy {strategy.__name__} is not one the speed path is verified with"
    if import_path(type(plugin)) not in VERIFIED_PRECISIONS or getattr(plugin, "scaler", None) is not None:
        return f"the precision plugin {type(plugin).__name__} (precision={trainer.precision!r}) is not one the speed path is verified with"
    for callback in trainer.callbacks:
        reason = unknown_callback_reason(callback)
        if reason is not None:
            return f"{reason} (verified callbacks and callbacks that only observe keep the speed path: docs/reuse.md)"
    return None
