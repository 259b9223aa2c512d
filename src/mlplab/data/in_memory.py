"""``InMemoryDataModule``: the base of every mlplab DataModule, serving splits held in memory as tensors.

Subclasses build the splits (:meth:`InMemoryDataModule.build_splits`); this class fits the
pre-processing on the training split, keeps the data on the model's device, serves it through
:class:`~mlplab.data.loader.TensorBatchLoader` (groups of batches for the grouped speed path, see
:class:`~mlplab.data.loader.GroupsTrainBatches`), moves batches cheaply and saves the training
loader's position for mid-epoch resume.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.plugins.precision import Precision
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from mlplab.data.loader import BatchGroup, TensorBatchLoader
from mlplab.data.preprocessing import DEFAULT_WHITEN_EPS, REDUCING, Preprocessor, fit_preprocessor
from mlplab.errors import ConfigError


class InMemoryDataModule(LightningDataModule):
    """Serve train/val/test splits held in memory as tensors, with pre-processing fitted on train.

    Subclasses implement :meth:`build_splits` and call ``save_hyperparameters()`` with at least
    ``batch_size`` (``None`` = the whole training split, full-batch GD), ``eval_batch_size``,
    ``num_workers``, ``seed``, ``normalize`` and ``test_split`` (the split ``test``/``predict``
    evaluate: ``test`` by default, ``train`` or ``val`` to measure a checkpoint there).
    Class attributes describe the data for the model.
    """

    task: ClassVar[str] = "multiclass"
    classes: ClassVar[tuple[str, ...]] = ()
    input_shape: ClassVar[tuple[int, ...]] = ()

    def __init__(self) -> None:
        super().__init__()
        self.splits: dict[str, tuple[Tensor, Tensor]] = {}
        self.preprocessor: Preprocessor | None = None
        self.train_group = 1
        self.train_loader: TensorBatchLoader | None = None
        self.train_position: dict[str, int] | None = None  # restored from a checkpoint, for the next train loader
        self.predict_names: list[str] | None = None  # file names of the samples predict runs on, when not a split

    def group_train_batches(self, group: int) -> bool:
        """Serve ``group`` consecutive training batches per fetch (a :class:`BatchGroup`): see :class:`~mlplab.data.loader.GroupsTrainBatches`.

        Only the in-memory loader groups (``num_workers=0``); a worker-process DataLoader cannot.
        """
        grouping = self.hparams.num_workers == 0
        self.train_group = group if grouping else 1
        return grouping or group == 1

    @property
    def num_classes(self) -> int:
        """Number of model outputs: classes, labels, or regression targets."""
        return len(self.classes)

    @property
    def raw_input_dim(self) -> int:
        """Number of values per sample before pre-processing."""
        return math.prod(self.input_shape)

    @property
    def input_dim(self) -> int:
        """Number of features the model sees after pre-processing (``pca_components`` for PCA)."""
        return self.hparams.get("pca_components") if self.hparams.normalize in REDUCING else self.raw_input_dim

    def build_splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Inputs and targets of the ``train``, ``val`` and ``test`` splits."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        """Build the splits once, check the batch size, fit the pre-processing on the training split."""
        if self.splits:
            return
        splits = self.build_splits()
        train_size = len(splits["train"][0])
        if self.hparams.batch_size is not None and self.hparams.batch_size > train_size:
            raise ConfigError(
                f"data.batch_size={self.hparams.batch_size} is larger than the {train_size} training samples; "
                f"use at most {train_size} (or null for full-batch gradient descent)."
            )
        self.preprocessor = fit_preprocessor(
            self.hparams.normalize,
            splits["train"][0],
            self.hparams.get("pca_components"),
            self.hparams.get("whiten_eps", DEFAULT_WHITEN_EPS),
            deskew=self.hparams.get("deskew", False),
        )
        device = self._device()
        self.splits = {name: (x.to(device), y.to(device)) for name, (x, y) in splits.items()}

    def _device(self) -> torch.device:
        """Keep the data where the model is (on a GPU: no copy per step), unless worker processes serve it."""
        if self.trainer is None or self.hparams.num_workers > 0:
            return torch.device("cpu")
        return self.trainer.strategy.root_device

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Give each batch of a :class:`BatchGroup` the precision plugin's input conversion.

        Lightning converts a batch's floating-point tensors (``bf16-true``: to bfloat16,
        ``64-true``: to float64) just before this hook with ``apply_to_collection``, which does not
        look inside a group; the mixed and 32-bit plugins leave inputs as they are.
        """
        plugin = self.trainer.precision_plugin if self.trainer is not None else None
        if isinstance(batch, BatchGroup) and plugin is not None and type(plugin).convert_input is not Precision.convert_input:
            return batch.map(plugin.convert_input)
        return batch

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Move a batch (tensors, a tuple of tensors, or a :class:`BatchGroup` of such tuples) with one ``.to`` per tensor.

        Lightning's generic transfer walks any collection with ``apply_to_collection``: about 0.4 ms
        for a group of 16 batches, as much as a small MLP's optimizer step. These batches have a
        known shape; with the data already on the model's device (see :meth:`setup`) each ``.to``
        returns its tensor unchanged, and a group of batches is passed on as it is. Anything else
        goes to Lightning's version.
        """
        if isinstance(batch, Tensor):
            return batch.to(device)
        if isinstance(batch, BatchGroup):  # each batch moves when it is gathered, unless the data already lives there
            if self.splits and all(x.device == device for x, _ in self.splits.values()):
                return batch
            return batch.map(lambda item: tuple(tensor.to(device) for tensor in item))
        if isinstance(batch, tuple) and all(isinstance(item, Tensor) for item in batch):
            return tuple(item.to(device) for item in batch)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def _loader(self, split: str, stage: str) -> TensorBatchLoader | DataLoader:
        """The loader of ``split`` for ``stage`` (``train``, ``val``, ``test`` or ``predict``: its batch size and ``trainer.limit_*``)."""
        if not self.splits:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before asking for the {split} loader.")
        x, y = self.splits[split]
        train = stage == "train"
        rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        batch_size = self.hparams.batch_size if train else (self.hparams.eval_batch_size or self.hparams.batch_size)
        batch_size = batch_size or len(x)
        if self.hparams.num_workers > 0:
            loader = DataLoader(
                TensorDataset(x, y),
                batch_size=batch_size,
                shuffle=train,
                num_workers=self.hparams.num_workers,
                pin_memory=self.hparams.get("pin_memory", False),
                persistent_workers=True,
                generator=torch.Generator().manual_seed(self.hparams.seed),
            )
        else:
            group = self.train_group if train else 1
            loader = TensorBatchLoader(
                (x, y), batch_size, shuffle=train, seed=self.hparams.seed, rank=rank, world_size=world_size, group=group
            )
        self._check_batch_fraction(stage, len(loader), math.ceil(len(x) / world_size), batch_size)
        return loader

    def _check_batch_fraction(self, stage: str, batches: int, samples: int, batch_size: int) -> None:
        """ConfigError when ``trainer.limit_<stage>_batches`` is a fraction of this loader's ``batches`` (of ``samples``) below one batch.

        Lightning refuses it too, naming only the fraction; with evaluation batches larger than training ones the
        fix is often the batch size, which this names as well.
        """
        limit = getattr(self.trainer, f"limit_{stage}_batches", None) if self.trainer is not None else None
        if not (isinstance(limit, float) and 0 < limit < 1 and batches and int(limit * batches) < 1):
            return
        key = "data.batch_size" if stage == "train" else "data.eval_batch_size"
        largest = max(1, samples // math.ceil(1 / limit))
        while largest > 1 and int(limit * math.ceil(samples / largest)) < 1:
            largest -= 1
        train_batch = self.hparams.batch_size
        unset = " (or leave it unset: the training batch size)" if stage != "train" and train_batch and train_batch <= largest else ""
        raise ConfigError(
            f"trainer.limit_{stage}_batches={limit} of the {batches} {stage} batches ({key}={batch_size}) is less than one batch; "
            f"set {key} to at most {largest}{unset}, or give trainer.limit_{stage}_batches as a larger fraction or as a whole "
            "number of batches (e.g. 1)."
        )

    def train_dataloader(self) -> TensorBatchLoader | DataLoader:
        loader = self._loader("train", "train")
        if isinstance(loader, TensorBatchLoader):
            self.train_loader = loader
            if self.train_position is not None:
                loader.load_state_dict(self.train_position)
        return loader

    def state_dict(self) -> dict[str, Any]:
        """The training loader's position in its epoch, so a fit resumed from a mid-epoch checkpoint continues there.

        (The loader also offers it to Lightning directly; this copy is restored before any loader
        exists, which also covers fits whose scheduler asks for the step count early.)
        """
        return {"train_position": self.train_loader.state_dict()} if self.train_loader is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train_position = state_dict.get("train_position")
        if self.train_loader is not None and self.train_position is not None:
            self.train_loader.load_state_dict(self.train_position)

    def val_dataloader(self) -> TensorBatchLoader | DataLoader:
        return self._loader("val", "val")

    def test_dataloader(self) -> TensorBatchLoader | DataLoader:
        return self._loader(self.hparams.test_split, "test")

    def predict_dataloader(self) -> TensorBatchLoader | DataLoader:
        return self._loader(self.hparams.test_split, "predict")
