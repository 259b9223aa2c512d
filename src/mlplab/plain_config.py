"""Hyper-parameters as plain Python data, whatever config system built them (LightningCLI, Hydra/OmegaConf, Python).

Hydra hands a ``ListConfig``/``DictConfig`` to ``__init__`` unless its config says ``_convert_: all``;
``save_hyperparameters`` stores what it was given, and a checkpoint holding an OmegaConf object cannot
be read by ``torch.load(weights_only=True)`` (PyTorch's default, and what ``trainer.test(ckpt_path="best")``
and ``load_from_checkpoint`` do). Converted by the container protocols (``Mapping``, ``Sequence``),
so OmegaConf itself is never imported.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any


def plain_data(value: Any) -> Any:
    """``value`` with every mapping turned into a ``dict`` and every sequence but ``str``/``bytes``/``tuple`` into a ``list``, recursively."""
    if isinstance(value, (str, bytes)):
        return value
    if isinstance(value, Mapping):
        return {key: plain_data(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(plain_data(item) for item in value)
    if isinstance(value, Sequence):
        return [plain_data(item) for item in value]
    return value


def make_hyperparameters_plain(hparams: MutableMapping[str, Any]) -> None:
    """Replace, in place, every stored hyper-parameter by its :func:`plain_data` form (what a checkpoint saves)."""
    for key, value in list(hparams.items()):
        hparams[key] = plain_data(value)
