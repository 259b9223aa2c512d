"""Learning-rate schedules torch.optim does not ship as a single class.

``LinearLR`` followed by ``CosineAnnealingLR`` through ``SequentialLR`` needs both inner schedulers
built on the optimizer, which a config-level ``LRSchedulerCallable`` cannot express; this one
class does the same with one formula and takes ``total_steps`` from the Trainer like OneCycleLR.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from mlplab.errors import ConfigError


class WarmupCosineLR(LambdaLR):
    """Linear warm-up from ``lr / warmup_steps`` to ``lr`` over ``warmup_steps`` steps, then cosine decay to ``min_lr_ratio * lr``.

    Step it every optimizer step (mlplab does so automatically, and fills ``total_steps`` from
    ``Trainer.estimated_stepping_batches`` when left ``None``). Factor at step ``t``:
    ``(t + 1) / w`` for ``t < w``; then ``m + (1 - m) * (1 + cos(pi * (t - w) / (T - w))) / 2``.
    """

    def __init__(self, optimizer: Optimizer, warmup_steps: int = 100, total_steps: int | None = None, min_lr_ratio: float = 0.0) -> None:
        if total_steps is None:
            raise ConfigError("WarmupCosineLR needs total_steps (mlplab's LitMLP fills it from the Trainer).")
        if not 0 <= warmup_steps < total_steps:
            raise ConfigError(
                f"WarmupCosineLR's warmup_steps={warmup_steps} is not allowed; it must be in [0, total_steps={total_steps}), "
                "and total_steps is the number of optimizer steps this fit takes (max_epochs x steps per epoch, or max_steps): "
                "lower model.lr_scheduler.init_args.warmup_steps or train longer."
            )
        self.warmup_steps, self.total_steps, self.min_lr_ratio = warmup_steps, total_steps, min_lr_ratio
        super().__init__(optimizer, self.factor)

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
