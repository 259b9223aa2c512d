"""Activation functions by name, so configs can choose them with a string."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

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


def make_activation(name: str) -> nn.Module:
    """A new activation module for ``name``; ConfigError naming the allowed names otherwise."""
    if name not in ACTIVATIONS:
        raise ConfigError(f"model.activation={name!r} is not a known activation; allowed: {', '.join(ACTIVATIONS)}.")
    return ACTIVATIONS[name]()
