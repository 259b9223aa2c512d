"""Lightning's training epoch loop, served a group of batches per fetch, stepping once per batch.

Lightning's per-batch machinery (data fetcher, the generic hook dispatch over every callback,
the automatic-optimization closure, strategy and precision plugin) costs about as much as a
small MLP's step. :class:`GroupedTrainingEpochLoop` keeps Lightning's loop and its counters as
they are and only makes one batch cheaper to reach:

- the train loader serves a :class:`~mlplab.data.loader.BatchGroup` of consecutive batches per
  fetch (``len(loader)`` still counts batches);
- each ``advance`` of the epoch loop takes the next batch of that group and runs Lightning's own
  per-batch sequence for it — progress counters, logger-connector calls, ``on_train_batch_start``
  / ``on_train_batch_end`` of every callback that overrides them (the others are skipped, not
  called with nothing to do), the manual-optimization step, and Lightning's own
  ``on_advance_end`` (validation checks, the logger's step counter, SIGTERM).

So every Trainer flag, progress bar, logger step and per-batch callback sees one batch per
step, exactly as with one step per call. Everything here is Lightning-private (``_TrainingEpochLoop``
and its counters); :func:`mlplab.grouped.lightning_release_reason` keeps it to the releases it was verified on
(this module is imported only by a fit that takes the speed path).
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import suppress
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loops.optimization.manual import ManualResult
from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.strategies import SingleDeviceStrategy, Strategy
from lightning.pytorch.trainer import call
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn

from mlplab.data.loader import BatchGroup
from mlplab.errors import ConfigError

PER_BATCH_HOOKS = ("on_train_batch_start", "on_train_batch_end")


def epoch_ran_to_its_end(trainer: Trainer) -> bool:
    """Whether the epoch ending now served all its batches (Lightning steps epoch schedulers then, not after a cut by max_steps/max_time)."""
    # private: the epoch loop's own test, which Lightning's automatic scheduler stepping uses
    return trainer.fit_loop.epoch_loop._num_ready_batches_reached()


class GroupedTrainingEpochLoop(_TrainingEpochLoop):
    """Lightning's training epoch loop, taking its batches one at a time from groups of batches.

    Installed by :func:`install_grouped_loop` (the Trainer builds its own ``_TrainingEpochLoop``
    and offers no public way to change it). When the module is not grouping
    (``module.grouped_steps`` is false) every call goes to Lightning's own ``advance``.
    """

    # (set by install_grouped_loop, then by reset() at every epoch start)
    group: BatchGroup | None
    position: int
    validates_this_epoch: bool | None
    per_batch_hooks: dict[str, tuple[list[Any], Any]]

    def reset(self) -> None:
        super().reset()
        self.group, self.position = None, 0  # a group cut short by max_steps is not carried into the next epoch
        self.validates_this_epoch = None
        accumulate = self.trainer.accumulate_grad_batches
        if accumulate != 1 and getattr(self.trainer.lightning_module, "grouped_steps", False):
            # set during the fit by a callback's observing hook (the speed path was chosen at setup with 1)
            raise ConfigError(
                f"trainer.accumulate_grad_batches became {accumulate} during a fit on mlplab's speed path (model.steps_per_call > 1), "
                "which takes one optimizer step per batch; set model.steps_per_call=1 to accumulate gradients."
            )

    def _should_check_val_epoch(self) -> bool:
        """Lightning's test whether this epoch validates, computed once per epoch (it is asked after every batch).

        Its inputs (``enable_validation``, ``check_val_every_n_epoch``, the epoch) do not change within an epoch.
        """
        if self.validates_this_epoch is None:
            self.validates_this_epoch = super()._should_check_val_epoch()
        return self.validates_this_epoch

    def advance(self, data_fetcher: Any) -> None:
        trainer = self.trainer
        module = trainer.lightning_module
        if not getattr(module, "grouped_steps", False):
            return super().advance(data_fetcher)
        # the start of Lightning's advance: a restart that ends in validation, and SIGTERM on several processes
        if self.restarting and self._should_check_val_fx(data_fetcher):
            if self.val_loop.restarted_mid_evaluation:
                return None
            if self.restarted_on_last:
                self._skip_next_val = True
                return None
            self.val_loop.increment_progress_to_evaluation_end()
        if self.val_loop.restarting:  # (Lightning resets it every batch; its setter walks every attribute of the loop)
            self.val_loop.restarting = False
        if trainer.world_size > 1:
            self._broadcast_sigterm_tensor()

        batch = self._next_batch(data_fetcher, module)
        batch_idx = self.batch_idx + 1
        # the rest of Lightning's advance, for this one batch
        self.batch_progress.increment_ready()
        trainer._logger_connector.on_batch_start(batch)
        response = self._call_hook("on_train_batch_start", module, batch, batch_idx)
        trainer.strategy.on_train_batch_start(batch, batch_idx)
        if response == -1:  # the module asks to skip the rest of the epoch
            self.batch_progress.increment_by(0, is_last_batch=True)
            self.batch_progress.increment_processed()
            raise StopIteration
        self.batch_progress.increment_started()
        output = self._run_training_step(module, batch, batch_idx)
        self.batch_progress.increment_processed()
        self._call_hook("on_train_batch_end", module, output, batch, batch_idx)
        connector = trainer._logger_connector
        if self.position == len(self.group):
            connector.on_batch_end()
        else:
            # on_batch_end also refreshes the connector's cached metric dicts, which its callback_metrics,
            # logged_metrics and progress_bar_metrics properties recompute on every read while the fit runs:
            # once per group is enough (it costs about as much as a tenth of a small MLP's step)
            self._results.batch = self._results.batch_size = None  # private: the epoch loop's result collection
        self.batch_progress.increment_completed()
        # update_train_step_metrics without its accumulation test (this loop never accumulates)
        if connector.should_update_logs or trainer.fast_dev_run:
            connector.log_metrics(connector.metrics["log"])
        return None

    def _next_batch(self, data_fetcher: Any, module: LightningModule) -> Any:
        """The next batch of the current group, fetching (and transferring) the next group when this one is used up."""
        if self.group is None or self.position == len(self.group):
            group, _, _ = next(data_fetcher)  # StopIteration ends the epoch, as in Lightning's advance
            trainer = self.trainer
            # what Lightning's advance does to each fetched item (the DataModule's hooks handle a group)
            group = trainer.precision_plugin.convert_input(group)
            group = module._on_before_batch_transfer(group, dataloader_idx=0)
            group = call._call_strategy_hook(trainer, "batch_to_device", group, dataloader_idx=0)
            self.group, self.position = (group if isinstance(group, BatchGroup) else BatchGroup.of(group, data_fetcher.done)), 0
            self._find_hooks(module)
        batch = self.group[self.position]
        self.position += 1
        # Lightning reads this from the fetcher, which counts groups: the loader knows which batch ends the epoch
        self.batch_progress.is_last_batch = self.position == len(self.group) and self.group.ends_epoch
        return batch

    def _find_hooks(self, module: LightningModule) -> None:
        """Which callbacks and module hooks run per batch, and how training_step is called (looked up once per group, not per batch)."""
        trainer = self.trainer
        self.per_batch_hooks = {
            hook: (
                [getattr(callback, hook) for callback in trainer.callbacks if is_overridden(hook, callback, Callback)],
                getattr(module, hook) if is_overridden(hook, module, LightningModule) else None,
            )
            for hook in PER_BATCH_HOOKS
        }
        # what Lightning's _build_kwargs finds in training_step's signature at every batch
        self.takes_batch_idx = "batch_idx" in self._build_kwargs(OrderedDict(), None, 0)
        strategy = type(trainer.strategy)  # one device, and a strategy class that keeps Lightning's training_step
        self.calls_training_step_directly = (
            issubclass(strategy, SingleDeviceStrategy)
            and strategy.training_step is Strategy.training_step
            and strategy.post_training_step is Strategy.post_training_step
            and isinstance(trainer.profiler, PassThroughProfiler)
        )
        plugin = type(trainer.precision_plugin)  # the 32-bit plugin's train_step_context does nothing
        plain = plugin.train_step_context is Precision.train_step_context and plugin.forward_context is Precision.forward_context
        self.train_step_context = None if plain else trainer.precision_plugin.train_step_context

    def _run_training_step(self, module: LightningModule, batch: Any, batch_idx: int) -> dict[str, Any]:
        """Lightning's manual-optimization run of ``training_step`` on one batch; returns the outputs ``on_train_batch_end`` gets.

        On one device without a profiler, the wrappers of ``_ManualOptimization.run`` around the call
        (the strategy-hook dispatch with its debug message and profiler scopes, the strategy's
        redirection for a wrapped model) do nothing but cost about 10 µs per batch. There the call is
        made directly with what they do that matters: the optimizer step counter (``global_step``)
        hooked around it, the hook name ``self.log`` checks, the precision plugin's context, and the
        outputs converted as Lightning converts them.
        """
        args = (batch, batch_idx) if self.takes_batch_idx else (batch,)
        manual = self.manual_optimization
        if not self.calls_training_step_directly:
            with self.trainer.profiler.profile("run_training_batch"):
                return manual.run(OrderedDict(zip(("batch", "batch_idx"), args, strict=False)))
        # private: the manual-optimization loop's hooks of the optimizer step counter, set and reset around each call
        manual.on_run_start()
        previous = module._current_fx_name
        set_hook_name(module, "training_step")
        output = None
        with suppress(StopIteration):  # (as Lightning's run suppresses it)
            if self.train_step_context is None:
                output = module.training_step(*args)
            else:
                with self.train_step_context():
                    output = module.training_step(*args)
        set_hook_name(module, previous)
        manual._restarting = False  # private: what _ManualOptimization.run resets after its call
        manual.on_run_end()
        # private: ManualResult (in Lightning's private loops package) is how run converts a returned loss or dict
        return {} if output is None else ManualResult.from_training_step_output(output).asdict()

    def _call_hook(self, hook: str, module: LightningModule, *args: Any) -> Any:
        """Lightning's ``call._call_callback_hooks`` then ``call._call_lightning_module_hook`` for one per-batch hook.

        Only the callbacks that override ``hook`` are called (the others would do nothing), then the
        module's hook if it overrides Lightning's (which does nothing); returns the module's answer.
        """
        callbacks, module_hook = self.per_batch_hooks[hook]
        if not callbacks and module_hook is None:
            return None
        previous = module._current_fx_name
        set_hook_name(module, hook)  # what self.log inside the hook checks, as Lightning sets it (once for both here)
        try:
            trainer = self.trainer
            for callback_hook in callbacks:
                callback_hook(trainer, module, *args)
            return None if module_hook is None else module_hook(*args)
        finally:
            set_hook_name(module, previous)


def set_hook_name(module: LightningModule, name: str | None) -> None:
    """Set the module's current hook name (``_current_fx_name``, which Lightning sets around every hook it calls).

    ``nn.Module.__setattr__`` first checks whether the value is a parameter, buffer or module (about
    2 µs; this runs six times per batch) and then sets a plain value like this name with
    ``object.__setattr__``, which is called directly unless the module's class has its own ``__setattr__``.
    """
    if type(module).__setattr__ is nn.Module.__setattr__:
        object.__setattr__(module, "_current_fx_name", name)
    else:
        module._current_fx_name = name


def install_grouped_loop(trainer: Trainer) -> None:
    """Give ``trainer`` the grouped epoch loop (its state, counters and restored progress stay as they are)."""
    epoch_loop = trainer.fit_loop.epoch_loop
    if type(epoch_loop) is _TrainingEpochLoop:
        # private: Trainer.fit_loop.epoch_loop is built by the Trainer; swapping the class keeps every attribute
        epoch_loop.__class__ = GroupedTrainingEpochLoop
        epoch_loop.group, epoch_loop.position, epoch_loop.validates_this_epoch = None, 0, None
