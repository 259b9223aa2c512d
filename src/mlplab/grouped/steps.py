"""``GroupedSteps``: the LightningModule side of the speed path.

At ``setup("fit")`` the module decides whether this fit groups (:meth:`GroupedSteps.start_grouping`):
the DataModule must serve groups (:class:`~mlplab.data.loader.GroupsTrainBatches`) and everything
in the run must be known to behave the same on the speed path
(:func:`mlplab.grouped.eligibility.one_step_per_call_reason`). If it groups, the Trainer gets
:class:`~mlplab.grouped.loop.GroupedTrainingEpochLoop` and the module switches to manual
optimization: :meth:`GroupedSteps.manual_step` does per batch what Lightning's automatic
optimization does (zero_grad, forward, backward, optimizer step, step-interval scheduler), with
Lightning's dispatch to backward/optimizer hooks skipped when nothing overrides them.

The host class provides ``training_loss(batch)`` (the loss one step minimises),
``log_grad_norm(step)`` (its logging before the update) and the ``steps_per_call``,
``scheduler_interval`` and ``hparams.lr_scheduler_monitor`` attributes.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor

from mlplab.data.loader import GroupsTrainBatches
from mlplab.errors import ConfigError
from mlplab.grouped import lightning_release_reason
from mlplab.grouped.eligibility import one_step_per_call_reason


class GroupedSteps(LightningModule):
    """Mixin for a LightningModule whose fit may take its optimizer steps through the grouped loop."""

    grouped_steps = False  # decided per fit in start_grouping
    plain_backward = False  # decided per fit in prepare_manual_steps
    plain_optimizer_step = False

    @property
    def automatic_optimization(self) -> bool:
        """False while this fit takes its optimizer steps through the grouped loop."""
        # private: LightningModule keeps the flag in _automatic_optimization behind this property (True unless set)
        return getattr(self, "_automatic_optimization", True) and not self.grouped_steps

    @automatic_optimization.setter
    def automatic_optimization(self, value: bool) -> None:
        self._automatic_optimization = value

    def _known_hooks_class(self) -> type[LightningModule]:
        """The class that mixed GroupedSteps in (LitMLP): its hooks are the ones the grouped path knows."""
        return next(cls for cls in type(self).__mro__ if GroupedSteps in cls.__bases__)

    def start_grouping(self, datamodule: Any) -> bool:
        """Whether this fit serves ``steps_per_call`` batches per fetch (and install the loop); if not, one info line says why."""
        if self.steps_per_call == 1:
            self.grouped_steps = False
            return False
        groups = isinstance(datamodule, GroupsTrainBatches)
        reason = lightning_release_reason() or one_step_per_call_reason(self, self.trainer, self._known_hooks_class())
        if reason is None and not (groups and datamodule.group_train_batches(self.steps_per_call)):
            reason = f"{type(datamodule).__name__} does not serve groups of batches (an mlplab DataModule with num_workers=0 does)"
        if reason is not None:
            if groups:
                datamodule.group_train_batches(1)
            rank_zero_info(f"mlplab: Lightning's own step per batch (model.steps_per_call={self.steps_per_call} not used): {reason}.")
            self.grouped_steps = False
            return False
        from mlplab.grouped.loop import install_grouped_loop  # (Lightning's private loop API: only on a verified release)

        install_grouped_loop(self.trainer)
        self.grouped_steps = True
        return True

    def prepare_manual_steps(self) -> None:
        """At the start of training: which of Lightning's per-step dispatches this run needs."""
        self.plain_backward = not self._backward_needs_lightning()
        self.plain_optimizer_step = not self._optimizer_step_needs_lightning()

    def manual_step(self, batch: Any) -> Tensor:
        """One optimizer step on ``batch``, as Lightning's automatic optimization takes it, then the step-interval scheduler.

        Returns the detached loss of the closure's last evaluation: what Lightning's automatic optimization hands
        ``on_train_batch_end`` as ``outputs["loss"]`` (an optimizer such as LBFGS evaluates the closure several times).
        """
        optimizer = self.optimizers()
        losses: list[Tensor] = []
        closure = functools.partial(self._closure, optimizer, batch, losses)
        if self.plain_optimizer_step:
            self._plain_optimizer_step(optimizer, closure, self.global_step)
        else:
            optimizer.step(closure=closure)
        self.step_schedulers("step")
        return losses[-1].detach()

    def _closure(self, optimizer: Any, batch: Any, losses: list[Tensor]) -> Tensor:
        # what Lightning's automatic optimization does per step: zero_grad, forward, backward
        optimizer.zero_grad()
        loss = self.training_loss(batch)
        if self.plain_backward:
            loss.backward()
        else:
            self.manual_backward(loss)
        losses.append(loss)
        return loss

    def _plain_optimizer_step(self, optimizer: LightningOptimizer, closure: Any, step: int) -> None:
        """What ``LightningOptimizer.step`` does on one device in fp32/bf16 when no callback hooks the step.

        Lightning's path (strategy → precision plugin → ``on_before_optimizer_step`` for every
        callback) costs about 40 µs per step, a tenth of a small MLP's step. This keeps its effects:
        the manual loop's step counter (``global_step``) through the optimizer's before/after
        callbacks, and the module's ``on_before_optimizer_step`` between backward and update (its
        grad-norm logging told the ``step`` being taken; a subclass overriding the hook takes Lightning's step).
        """

        def closure_then_hook() -> Tensor:
            loss = closure()
            self.log_grad_norm(step)
            return loss

        # private: the step counter Lightning's manual-optimization loop hangs on the optimizer
        optimizer._on_before_step()
        optimizer.optimizer.step(closure=closure_then_hook)
        optimizer._on_after_step()

    def _backward_needs_lightning(self) -> bool:
        """Whether ``manual_backward`` does more than ``loss.backward()`` in this run.

        It dispatches ``on_before_backward``/``on_after_backward`` to every callback and the module
        (about 0.2 ms per step with the default callbacks), scales the loss when the precision plugin
        has a gradient scaler (fp16), and prepares DDP's reducer. When no hook is overridden, there
        is no scaler and one device, both are the same computation, and the plain call is used.
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

    def step_schedulers(self, interval: str) -> None:
        """Step the scheduler if it runs per ``interval``, as Lightning does under automatic optimization.

        (Under manual optimization Lightning keeps no interval or monitor: the module remembers them.
        At an epoch's end it steps only after an epoch that ran to its end, as Lightning does.)
        """
        if self.scheduler_interval != interval:  # (checked first: this runs every optimizer step)
            return
        from mlplab.grouped.loop import epoch_ran_to_its_end  # (under manual optimization: imported by the speed path already)

        scheduler = self.lr_schedulers()
        if scheduler is None or (interval == "epoch" and not epoch_ran_to_its_end(self.trainer)):
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
