"""The plain ``nn.Module`` multi-layer perceptron.

Each hidden layer is a :class:`HiddenBlock`: Linear -> [BatchNorm] -> activation -> [Dropout]
(batch norm after the linear map and before the non-linearity, as seed 001 teaches). With
``activation="maxout"`` the Linear widens to ``out * pieces`` and the activation is the max over
pieces. With ``residual=True`` each block adds its input back (seed 003), through a bias-free
linear projection when the widths differ. ``hidden_dims=[]`` gives a single Linear layer.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from torch import Tensor, nn

from mlplab.errors import ConfigError
from mlplab.models.init import init_linear_layers
from mlplab.models.layers import ACTIVATION_NAMES, Maxout, make_activation


class HiddenBlock(nn.Module):
    """``branch(x)`` or, if ``residual``, ``shortcut(x) + branch(x)``.

    The branch is Linear -> [BatchNorm1d] -> activation -> [Dropout], or Maxout -> [Dropout].
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        residual: bool = False,
        maxout_pieces: int = 2,
    ) -> None:
        super().__init__()
        layers: list[nn.Module]
        if activation == "maxout":
            layers = [Maxout(in_features, out_features, maxout_pieces, batch_norm)]
        else:
            layers = [nn.Linear(in_features, out_features, bias=not batch_norm)]
            if batch_norm:
                layers.append(nn.BatchNorm1d(out_features))
            layers.append(make_activation(activation))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        self.branch = nn.Sequential(*layers)
        self.shortcut: nn.Module | None = None
        if residual:
            self.shortcut = nn.Identity() if in_features == out_features else nn.Linear(in_features, out_features, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = x
        for layer in self.branch:  # not self.branch(x): one module call less per block and step
            out = layer(out)
        return out if self.shortcut is None else self.shortcut(x) + out


class MLP(nn.Module):
    """A fully-connected network mapping ``(N, input_dim)`` (or any ``(N, ...)``, flattened) to ``(N, output_dim)``.

    Args:
        input_dim: number of input features.
        hidden_dims: widths of the hidden layers, in order; empty for a single linear layer.
        output_dim: number of outputs (classes, labels or regression targets).
        activation: non-linearity after each hidden layer: one of ``ACTIVATION_NAMES`` (incl. ``maxout``).
        dropout: dropout probability after each hidden activation, in [0, 1).
        batch_norm: insert BatchNorm1d between each hidden Linear and its activation.
        residual: add each hidden block's input to its output (projected when widths differ).
        maxout_pieces: linear pieces per maxout unit (``activation="maxout"`` only).
        init: weight initialisation scheme (see ``mlplab.models.INIT_SCHEMES``).
        init_std: standard deviation for the ``normal``, ``uniform`` and ``sparse`` schemes.
        bias_init: constant for every bias; ``None`` keeps PyTorch's default.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dims: Sequence[int],
        output_dim: int,
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        residual: bool = False,
        maxout_pieces: int = 2,
        init: str = "default",
        init_std: float = 0.01,
        bias_init: float | None = None,
    ) -> None:
        super().__init__()
        widths = [input_dim, *hidden_dims, output_dim]
        if any(int(w) != w or w <= 0 for w in widths):
            raise ConfigError(
                f"model.hidden_dims={list(hidden_dims)} is not allowed (with input_dim={input_dim}, num_classes={output_dim}): "
                "every layer width must be a positive integer; an empty list means no hidden layer (a linear model)."
            )
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"model.dropout={dropout} is not allowed; it must be in [0, 1).")
        if activation not in ACTIVATION_NAMES:
            raise ConfigError(f"model.activation={activation!r} is not a known activation; allowed: {', '.join(ACTIVATION_NAMES)}.")
        self.hidden = nn.Sequential(
            *(HiddenBlock(i, o, activation, dropout, batch_norm, residual, maxout_pieces) for i, o in itertools.pairwise(widths[:-1]))
        )
        self.output = nn.Linear(widths[-2], output_dim)
        init_linear_layers(self, init, init_std, bias_init)

    def forward(self, x: Tensor) -> Tensor:
        return self.output(self.hidden(x.flatten(1)))

    def weight_penalties(self, l1: float, l2: float) -> dict[str, Tensor]:
        """``l1 * sum|w|`` and ``l2 * sum w^2`` over the weight matrices (not biases or norm layers, seed 003), for non-zero coefficients."""
        if not (l1 or l2):
            return {}
        weights = [p for p in self.parameters() if p.ndim > 1]
        penalties = {}
        if l1:
            penalties["l1"] = l1 * sum(w.abs().sum() for w in weights)
        if l2:
            penalties["l2"] = l2 * sum(w.pow(2).sum() for w in weights)
        return penalties
