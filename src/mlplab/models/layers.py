"""Layers and activations chosen by name from configs."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from mlplab.errors import ConfigError

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
}
# maxout is not an element-wise function: it replaces the Linear layer (see Maxout)
ACTIVATION_NAMES = (*ACTIVATIONS, "maxout")


def make_activation(name: str) -> nn.Module:
    """A new element-wise activation module for ``name``; ConfigError naming the allowed names otherwise."""
    if name not in ACTIVATIONS:
        raise ConfigError(f"model.activation={name!r} is not a known activation; allowed: {', '.join(ACTIVATION_NAMES)}.")
    return ACTIVATIONS[name]()


class MaxoutMax(nn.Module):
    """Take the maximum over groups of ``pieces`` consecutive features: (N, out * pieces) -> (N, out)."""

    def __init__(self, pieces: int) -> None:
        super().__init__()
        self.pieces = pieces

    def forward(self, x: Tensor) -> Tensor:
        return x.unflatten(1, (-1, self.pieces)).amax(dim=2)

    def extra_repr(self) -> str:
        return f"pieces={self.pieces}"


class Maxout(nn.Sequential):
    """Maxout unit (Goodfellow et al. 2013, seed 001): ``out_features`` maxima over ``pieces`` linear maps each.

    ``y_j = max_k (W_{jk} x + b_{jk})``: a ``Linear(in, out * pieces)`` (``pieces * (in + 1) * out``
    parameters), optionally batch-normalised before the max, then the max over each group of pieces.
    """

    def __init__(self, in_features: int, out_features: int, pieces: int = 2, batch_norm: bool = False) -> None:
        if pieces < 2:
            raise ConfigError(f"model.maxout_pieces={pieces} is not allowed; a maxout unit needs at least 2 pieces.")
        layers: list[nn.Module] = [nn.Linear(in_features, out_features * pieces, bias=not batch_norm)]
        if batch_norm:
            layers.append(nn.BatchNorm1d(out_features * pieces))
        super().__init__(*layers, MaxoutMax(pieces))
