"""The plain PyTorch MLP and its parts (no Lightning needed)."""

from mlplab.models.init import INIT_SCHEMES, init_linear_layers
from mlplab.models.layers import ACTIVATION_NAMES, ACTIVATIONS, Maxout, MaxoutMax, make_activation
from mlplab.models.mlp import MLP, HiddenBlock

__all__ = [
    "ACTIVATIONS",
    "ACTIVATION_NAMES",
    "INIT_SCHEMES",
    "MLP",
    "HiddenBlock",
    "Maxout",
    "MaxoutMax",
    "init_linear_layers",
    "make_activation",
]
