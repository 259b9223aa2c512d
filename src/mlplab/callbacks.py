"""Callbacks Lightning does not provide out of the box: TensorBoard views and a CSV prediction writer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torchvision
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

from mlplab.data.idx import atomic_write_bytes


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


class CSVPredictionWriter(BasePredictionWriter):
    """Write ``predict``'s outputs to a CSV file: sample (file name or index), predicted class, probabilities.

    One row per sample, columns ``file`` (PNG files of ``data.predict_dir``) or ``index`` (a split),
    ``predicted`` (class name; for multi-label the names above 0.5 joined by ``;``; for regression
    the value) and ``p_<class>`` per output. Written atomically once predict ends. Single process.

    Args:
        output: path of the CSV file.
    """

    def __init__(self, output: str = "predictions.csv") -> None:
        super().__init__(write_interval="epoch")
        self.output = output

    def write_on_epoch_end(self, trainer: Trainer, pl_module: LightningModule, predictions: Any, batch_indices: Any) -> None:
        outputs = torch.cat([torch.as_tensor(p).float().cpu() for p in predictions]).reshape(sum(len(p) for p in predictions), -1)
        datamodule = trainer.datamodule
        names = getattr(datamodule, "predict_names", None)
        classes = list(getattr(datamodule, "classes", ()) or range(outputs.shape[1]))
        task = pl_module.hparams.get("task", "multiclass")
        lines = [",".join([("file" if names else "index"), "predicted", *(f"p_{c}" for c in classes)])]
        for i, row in enumerate(outputs):
            if task == "multiclass":
                predicted = str(classes[int(row.argmax())])
            elif task == "multilabel":
                predicted = ";".join(str(classes[j]) for j in (row > 0.5).nonzero().flatten().tolist())
            else:
                predicted = ";".join(f"{v:.6g}" for v in row.tolist())
            sample = names[i] if names else str(i)
            lines.append(",".join([sample, predicted, *(f"{v:.6f}" for v in row.tolist())]))
        atomic_write_bytes(Path(self.output), ("\n".join(lines) + "\n").encode())
        rank_zero_info(f"mlplab: wrote {len(outputs)} predictions to {self.output}")
