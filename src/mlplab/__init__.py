"""mlplab: multi-layer perceptrons on MNIST and Fashion-MNIST with PyTorch Lightning.

Public API for other Lightning projects::

    from mlplab import LitMLP
    from mlplab.data import MNISTDataModule, FashionMNISTDataModule
    from mlplab.models import MLP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlplab.lazy import lazy_exports

if TYPE_CHECKING:
    from mlplab.callbacks import CSVPredictionWriter, FusedEMAWeightAveraging, LayerGradientNorms, TestDiagnostics, TrainBatchImageGrid
    from mlplab.data import FashionMNISTDataModule, IDXDataModule, MNISTDataModule
    from mlplab.lit_mlp import LitMLP
    from mlplab.lr_finder import LearningRateFinderReport
    from mlplab.models import MLP

# the public names and their modules, imported on first use (mlplab.lazy)
__getattr__ = lazy_exports(
    __name__,
    {
        "CSVPredictionWriter": "mlplab.callbacks",
        "FusedEMAWeightAveraging": "mlplab.callbacks",
        "LayerGradientNorms": "mlplab.callbacks",
        "TestDiagnostics": "mlplab.callbacks",
        "TrainBatchImageGrid": "mlplab.callbacks",
        "FashionMNISTDataModule": "mlplab.data",
        "IDXDataModule": "mlplab.data",
        "MNISTDataModule": "mlplab.data",
        "LitMLP": "mlplab.lit_mlp",
        "LearningRateFinderReport": "mlplab.lr_finder",
        "MLP": "mlplab.models",
    },
)


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
