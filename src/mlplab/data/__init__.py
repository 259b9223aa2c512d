"""Data: IDX files (read, verify, fetch) and LightningDataModules serving them from memory."""

from mlplab.data.augment import BatchAugment
from mlplab.data.datamodules import (
    DATAMODULES,
    FashionMNISTDataModule,
    IDXDataModule,
    MNISTDataModule,
    MultiLabelMNISTDataModule,
)
from mlplab.data.idx import read_idx, write_idx
from mlplab.data.in_memory import InMemoryDataModule
from mlplab.data.loader import BatchGroup, TensorBatchLoader
from mlplab.data.preprocessing import Preprocessor, fit_preprocessor
from mlplab.data.sources import FASHION_MNIST, MNIST, DatasetSource, IDXFile, ensure_dataset
from mlplab.data.synthetic import LinearRegressionDataModule, NoisyLineDataModule, SyntheticRegressionDataModule

__all__ = [
    "DATAMODULES",
    "FASHION_MNIST",
    "MNIST",
    "BatchAugment",
    "BatchGroup",
    "DatasetSource",
    "FashionMNISTDataModule",
    "IDXDataModule",
    "IDXFile",
    "InMemoryDataModule",
    "LinearRegressionDataModule",
    "MNISTDataModule",
    "MultiLabelMNISTDataModule",
    "NoisyLineDataModule",
    "Preprocessor",
    "SyntheticRegressionDataModule",
    "TensorBatchLoader",
    "ensure_dataset",
    "fit_preprocessor",
    "read_idx",
    "write_idx",
]
