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
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        tensorboard = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if tensorboard is None or images.ndim != 4:
            return
        grid = torchvision.utils.make_grid(images[: self.max_images].detach().float().cpu(), nrow=8, normalize=True)
        tensorboard.experiment.add_image("train/batch", grid, global_step=trainer.global_step)
