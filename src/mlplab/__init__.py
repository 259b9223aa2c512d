"""mlplab: multi-layer perceptrons on MNIST and Fashion-MNIST with PyTorch Lightning.

Public API for other Lightning projects::

    from mlplab import LitMLP
    from mlplab.data import MNISTDataModule, FashionMNISTDataModule
    from mlplab.models import MLP
"""

from mlplab.callbacks import CSVPredictionWriter, FusedEMAWeightAveraging, LayerGradientNorms, TestDiagnostics, TrainBatchImageGrid
from mlplab.data import FashionMNISTDataModule, IDXDataModule, MNISTDataModule
from mlplab.lit_mlp import LitMLP
from mlplab.lr_finder import LearningRateFinderReport
from mlplab.models import MLP

__version__ = "0.1.0"

__all__ = [
    "MLP",
    "CSVPredictionWriter",
    "FashionMNISTDataModule",
    "FusedEMAWeightAveraging",
    "IDXDataModule",
    "LayerGradientNorms",
    "LearningRateFinderReport",
    "LitMLP",
    "MNISTDataModule",
    "TestDiagnostics",
    "TrainBatchImageGrid",
    "__version__",
]
