"""Weight initialisation schemes for the linear layers, chosen by name (seed 001 lists them).

``default`` keeps PyTorch's own (Kaiming-uniform with a=sqrt(5)). ``normal`` and ``uniform``
draw with standard deviation ``std`` (uniform on [-sqrt(3) std, sqrt(3) std]); ``sparse`` zeros a
``sparsity`` fraction of each column and draws the rest from N(0, std); ``zeros`` is allowed to
demonstrate why it is wrong: every hidden unit then computes and learns the same thing.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

from torch import Tensor, nn

from mlplab.errors import ConfigError

_SCHEMES: dict[str, Callable[[Tensor, float], object] | None] = {
    "default": None,
    "normal": lambda w, std: nn.init.normal_(w, 0.0, std),
    "uniform": lambda w, std: nn.init.uniform_(w, -math.sqrt(3) * std, math.sqrt(3) * std),
    "xavier_normal": lambda w, std: nn.init.xavier_normal_(w),
    "xavier_uniform": lambda w, std: nn.init.xavier_uniform_(w),
    "kaiming_normal": lambda w, std: nn.init.kaiming_normal_(w, nonlinearity="relu"),
    "kaiming_uniform": lambda w, std: nn.init.kaiming_uniform_(w, nonlinearity="relu"),
    "sparse": lambda w, std: nn.init.sparse_(w, sparsity=0.9, std=std),
    "zeros": lambda w, std: nn.init.zeros_(w),
}
INIT_SCHEMES = tuple(_SCHEMES)


def check_init(scheme: str, std: float) -> None:
    if scheme not in _SCHEMES:
        raise ConfigError(f"model.init={scheme!r} is not a known initialisation; allowed: {', '.join(_SCHEMES)}.")
    if not std > 0:
        raise ConfigError(f"model.init_std={std} is not allowed; it must be a positive number.")


def init_linear_layers(module: nn.Module, scheme: str = "default", std: float = 0.01, bias: float | None = None) -> None:
    """Initialise the weight (and, if ``bias`` is given, set the bias) of every ``nn.Linear`` in ``module``."""
    check_init(scheme, std)
    if scheme == "zeros":
        warnings.warn(
            "model.init='zeros': every hidden unit starts identical and receives the same gradient, so they stay "
            "identical (the network behaves as if each layer had one unit).",
            stacklevel=2,
        )
    fill = _SCHEMES[scheme]
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            if fill is not None:
                fill(layer.weight, std)
            if bias is not None and layer.bias is not None:
                nn.init.constant_(layer.bias, bias)
