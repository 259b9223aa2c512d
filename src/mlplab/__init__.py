"""mlplab: multi-layer perceptrons on MNIST and Fashion-MNIST with PyTorch Lightning.

Public API for other Lightning projects::

    from mlplab import LitMLP
    from mlplab.data import MNISTDataModule, FashionMNISTDataModule
    from mlplab.models import MLP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlplab.callbacks import CSVPredictionWriter, FusedEMAWeightAveraging, LayerGradientNorms, TestDiagnostics, TrainBatchImageGrid
    from mlplab.data import FashionMNISTDataModule, IDXDataModule, MNISTDataModule
    from mlplab.lit_mlp import LitMLP
    from mlplab.lr_finder import LearningRateFinderReport
    from mlplab.models import MLP

# the public names and their modules, imported on first use (PEP 562): `import mlplab.cli` for a command that does
# not train (`mlplab tune` starting its trials' fork server, `mlplab data`) does not wait for torch and Lightning first
_EXPORTS = {
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
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mlplab' has no attribute {name!r}")


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
