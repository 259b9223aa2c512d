"""The plain PyTorch MLP and its parts (no Lightning needed)."""

from mlplab.models.init import INIT_SCHEMES, init_linear_layers
from mlplab.models.layers import ACTIVATIONS, make_activation
from mlplab.models.mlp import MLP, HiddenBlock

__all__ = ["ACTIVATIONS", "INIT_SCHEMES", "MLP", "HiddenBlock", "init_linear_layers", "make_activation"]
