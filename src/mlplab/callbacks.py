"""Callbacks that add TensorBoard views Lightning does not provide out of the box."""

from __future__ import annotations

from typing import Any

import torchvision
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger


class TrainBatchImageGrid(Callback):
    """Log a grid of the first training batch's images to TensorBoard once (seed 001 shows one).

    Needs image-shaped inputs ``(N, C, H, W)``; does nothing for flat/tabular data or without a
    TensorBoard logger.

    Args:
        max_images: how many images of the batch to show.
    """

    def __init__(self, max_images: int = 64) -> None:
        self.max_images = max_images
        self.logged = False

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self.logged or trainer.global_rank != 0:
            return
        self.logged = True
        if isinstance(batch, list):  # a group of batches (LitMLP.steps_per_call > 1): show the first
            batch = batch[0]
        images = batch[0] if isinstance(batch, tuple) else batch
        tensorboard = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if tensorboard is None or images.ndim != 4:
            return
        grid = torchvision.utils.make_grid(images[: self.max_images].detach().float().cpu(), nrow=8, normalize=True)
        tensorboard.experiment.add_image("train/batch", grid, global_step=trainer.global_step)


class LayerGradientNorms(Callback):
    """Log the L2 norm of each weight matrix's gradient as ``grad_norm/<parameter name>``.

    Seed 003's vanishing gradients show at a glance: in a deep sigmoid net the first layers'
    norms sit orders of magnitude below the last layer's. Logged on every ``every_n_steps``-th
    optimizer step, before gradient clipping.
    """

    def __init__(self, every_n_steps: int = 50) -> None:
        if every_n_steps <= 0:
            raise ValueError(f"every_n_steps must be positive, got {every_n_steps}")
        self.every_n_steps = every_n_steps

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        if trainer.global_step % self.every_n_steps:
            return
        norms = {f"grad_norm/{name}": p.grad.detach().norm() for name, p in pl_module.named_parameters() if p.grad is not None and p.ndim > 1}
        pl_module.log_dict(norms, on_step=True, on_epoch=False)
