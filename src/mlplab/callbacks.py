"""Callbacks Lightning does not provide out of the box: TensorBoard views, a CSV prediction writer, a faster EMA."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torchvision
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, EMAWeightAveraging, WeightAveraging
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch.optim.swa_utils import get_ema_multi_avg_fn
from torchmetrics.classification import MulticlassConfusionMatrix

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
        tensorboard = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if tensorboard is None:
            return
        images = batch[0] if isinstance(batch, (tuple, list)) else batch  # (a DataLoader collates into lists)
        if images.ndim != 4:
            return
        grid = torchvision.utils.make_grid(images[: self.max_images].detach().float().cpu(), nrow=8, normalize=True)
        tensorboard.experiment.add_image("train/batch", grid, global_step=trainer.global_step)


class LayerGradientNorms(Callback):
    """Log the L2 norm of each weight matrix's gradient as ``grad_norm/<parameter name>``, optionally histograms.

    Seed 003's vanishing gradients show at a glance: in a deep sigmoid net the first layers'
    norms sit orders of magnitude below the last layer's. Logged on every ``every_n_steps``-th
    optimizer step, before gradient clipping. With ``histograms=True`` (and a TensorBoard
    logger) the same steps also add histograms of every weight matrix (``weights/…``), its
    gradient (``gradients/…``) and each hidden block's output on that step's batch (``activations/hidden.<i>``).
    """

    def __init__(self, every_n_steps: int = 50, histograms: bool = False) -> None:
        if every_n_steps <= 0:
            raise ValueError(f"every_n_steps must be positive, got {every_n_steps}")
        self.every_n_steps, self.histograms = every_n_steps, histograms
        self.activations: dict[str, torch.Tensor] = {}
        self.hook_handles: list[Any] = []

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.histograms and isinstance(trainer.logger, TensorBoardLogger) and hasattr(pl_module, "net"):
            for index, block in enumerate(pl_module.net.hidden):
                self.hook_handles.append(block.register_forward_hook(self._keep_output(f"activations/hidden.{index}")))

    def _keep_output(self, tag: str) -> Any:
        def hook(module: Any, inputs: Any, output: torch.Tensor) -> None:
            if module.training:
                self.activations[tag] = output.detach()  # a reference, replaced every step: no copy

        return hook

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        if trainer.global_step % self.every_n_steps:
            return
        weights = {name: p for name, p in pl_module.named_parameters() if p.grad is not None and p.ndim > 1}
        pl_module.log_dict({f"grad_norm/{name}": p.grad.detach().norm() for name, p in weights.items()}, on_step=True, on_epoch=False)
        if self.hook_handles and trainer.is_global_zero:
            experiment = trainer.logger.experiment
            for name, p in weights.items():
                experiment.add_histogram(f"weights/{name}", p.detach(), trainer.global_step)
                experiment.add_histogram(f"gradients/{name}", p.grad.detach(), trainer.global_step)
            for tag, values in self.activations.items():
                experiment.add_histogram(tag, values, trainer.global_step)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        for handle in self.hook_handles:
            handle.remove()
        self.hook_handles, self.activations = [], {}


class FusedEMAWeightAveraging(WeightAveraging):
    """Lightning's ``EMAWeightAveraging`` (the same arguments, schedule and average) updated by one fused kernel.

    Lightning's EMA callback hands torch's ``AveragedModel`` a per-tensor function,
    ``decay * ema + (1 - decay) * w``: three temporary tensors per parameter, every optimizer
    step. ``AveragedModel`` also takes a ``multi_avg_fn`` working on all tensors at once, and torch
    ships the EMA one (``get_ema_multi_avg_fn``: one in-place ``torch._foreach_lerp_``), but the
    EMA callback always sets the per-tensor one (``AveragedModel`` accepts only one of the two).
    So this is Lightning's ``WeightAveraging`` base class given torch's fused function, with the
    EMA callback's own update schedule. The average differs from Lightning's only by float
    rounding; ``benchmarks/optimizer_step.py`` measures one update of each.
    """

    def __init__(
        self,
        decay: float = 0.999,
        update_every_n_steps: int = 1,
        update_starting_at_step: int | None = None,
        update_starting_at_epoch: int | None = None,
        use_buffers: bool = True,
        device: torch.device | str | int | None = None,
    ) -> None:
        super().__init__(device=device, use_buffers=use_buffers, multi_avg_fn=get_ema_multi_avg_fn(decay))
        self.update_every_n_steps = update_every_n_steps
        self.update_starting_at_step = update_starting_at_step
        self.update_starting_at_epoch = update_starting_at_epoch

    should_update = EMAWeightAveraging.should_update  # reads the three attributes above

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        """Resuming a fit restores the raw weights and the average; any other stage keeps the average.

        A checkpoint written during fit holds the average as its ``state_dict`` (already loaded
        into the module) and the raw weights as ``current_model_state``. Lightning's callback loads
        the raw weights whenever it still holds an average, so the Trainer that ran the fit would
        test (``trainer.test(ckpt_path="best")``, mlplab's test after fit) or validate the raw
        weights, while a new process tests the average.
        """
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)


class TestDiagnostics(Callback):
    """At the end of ``test`` (multi-class models, TensorBoard logger): a confusion-matrix figure and misclassified images.

    Logs ``test/confusion_matrix`` (torchmetrics' plot, rows = true class) and
    ``test/misclassified``, a grid of up to ``max_images`` wrongly classified test images titled
    ``predicted / true`` (under DDP: the matrix counts every rank's samples, the grid rank 0's).
    """

    __test__ = False  # not a pytest test class despite its name

    def __init__(self, max_images: int = 36) -> None:
        self.max_images = max_images
        self.confusion: MulticlassConfusionMatrix | None = None
        self.wrong: list[tuple[torch.Tensor, int, int]] = []

    def _active(self, trainer: Trainer, pl_module: LightningModule) -> bool:
        return isinstance(trainer.logger, TensorBoardLogger) and pl_module.hparams.get("task") == "multiclass"

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.wrong = []
        self.confusion = (
            MulticlassConfusionMatrix(pl_module.hparams.num_classes).to(pl_module.device) if self._active(trainer, pl_module) else None
        )

    def on_test_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self.confusion is None or outputs is None:
            return
        images, targets = batch
        predicted = outputs.argmax(1)
        self.confusion.update(predicted, targets)
        for index in (predicted != targets).nonzero().flatten()[: self.max_images - len(self.wrong)].tolist():
            # (float: matplotlib cannot show the bfloat16 inputs of bf16-true runs)
            self.wrong.append((images[index].detach().float().cpu(), int(predicted[index]), int(targets[index])))

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.confusion is None:
            return
        matrix = self.confusion.compute()  # synchronised across processes: every rank takes part
        if not trainer.is_global_zero:
            return
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        classes = list(getattr(trainer.datamodule, "classes", ()) or range(pl_module.hparams.num_classes))
        experiment, step = trainer.logger.experiment, trainer.global_step
        figure, _ = self.confusion.plot(val=matrix, labels=[str(c) for c in classes])
        figure.set_size_inches(8, 8)
        experiment.add_figure("test/confusion_matrix", figure, step)
        if self.wrong:
            columns = 6
            rows = -(-len(self.wrong) // columns)
            figure, axes = plt.subplots(rows, columns, figsize=(columns * 1.4, rows * 1.6), squeeze=False)
            for axis in axes.flat:
                axis.axis("off")
            for axis, (image, predicted, target) in zip(axes.flat, self.wrong, strict=False):
                axis.imshow(image.reshape(-1, image.shape[-1]).numpy(), cmap="gray")
                axis.set_title(f"{classes[predicted]} / {classes[target]}", fontsize=8)
            figure.tight_layout()
            experiment.add_figure("test/misclassified", figure, step)
        plt.close("all")


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
