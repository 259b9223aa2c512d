"""Small synthetic data sets of the seed experiments, drawn once from a seed.

- :class:`NoisyLineDataModule` — seed 003: 20 points of ``y = x + 0.3 ε`` on an even grid of
  [-1, 1]; the test (and validation) points are drawn separately with fresh noise, as in the seed.
- :class:`LinearRegressionDataModule` — seed 004: 100 points of ``y = 3 + 2x + 0.5 ε``,
  ``x ~ U[0, 2)``, drawn exactly as the seed does with ``np.random.seed(0)`` when ``seed=0``.

Both default to full-batch training (``batch_size: null``) and no pre-processing.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import torch
from torch import Tensor

from mlplab.data.in_memory import InMemoryDataModule
from mlplab.errors import ConfigError
from mlplab.plain_config import make_hyperparameters_plain


class SyntheticRegressionDataModule(InMemoryDataModule):
    """Base for 1-D regression sets: subclasses implement :meth:`sample`.

    Args:
        num_samples: points per split (train, val and test are drawn separately); ``None`` = the
            seed's size (20 for seed 003, 100 for seed 004).
        batch_size: training batch size; ``None`` (default) = the whole training split.
        seed: the training split is drawn from ``seed``, validation from ``seed + 1``, test from ``seed + 2``.
        noise: standard deviation of the Gaussian noise on ``y``.
        test_split: the split ``test``/``predict`` use (``train`` to measure the training error).
    """

    task: ClassVar[str] = "regression"
    classes: ClassVar[tuple[str, ...]] = ("y",)
    input_shape: ClassVar[tuple[int, ...]] = (1,)
    default_num_samples: ClassVar[int]
    default_noise: ClassVar[float]

    def __init__(
        self,
        num_samples: int | None = None,
        batch_size: int | None = None,
        seed: int = 0,
        noise: float | None = None,
        test_split: Literal["train", "val", "test"] = "test",
    ) -> None:
        super().__init__()
        num_samples = self.default_num_samples if num_samples is None else num_samples
        if num_samples <= 0 or (batch_size is not None and batch_size <= 0):
            raise ConfigError(f"data.num_samples={num_samples} and data.batch_size={batch_size} must be positive (batch_size may be null).")
        self.save_hyperparameters()
        make_hyperparameters_plain(self.hparams)
        self.hparams.update(
            num_samples=num_samples,
            noise=self.default_noise if noise is None else noise,
            normalize="none",
            num_workers=0,
            eval_batch_size=None,
        )

    def sample(self, n: int, seed: int) -> tuple[Tensor, Tensor]:
        """``n`` inputs of shape (n, 1) and targets of shape (n, 1), float32, from ``seed``."""
        raise NotImplementedError

    def build_splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        n, seed = self.hparams.num_samples, self.hparams.seed
        return {split: self.sample(n, seed + offset) for offset, split in enumerate(("train", "val", "test"))}


class NoisyLineDataModule(SyntheticRegressionDataModule):
    """Seed 003's over-fitting demo: ``y = x + noise * ε`` at ``num_samples`` evenly spaced ``x`` in [-1, 1]."""

    default_num_samples = 20
    default_noise = 0.3

    def sample(self, n: int, seed: int) -> tuple[Tensor, Tensor]:
        x = torch.linspace(-1, 1, n).unsqueeze(1)
        return x, x + self.hparams.noise * torch.randn(n, 1, generator=torch.Generator().manual_seed(seed))


class LinearRegressionDataModule(SyntheticRegressionDataModule):
    """Seed 004's line: ``y = 3 + 2x + noise * ε`` with ``x ~ U[0, 2)``, drawn like ``np.random.seed(seed)`` then rand/randn."""

    default_num_samples = 100
    default_noise = 0.5
    true_line = (2.0, 3.0)  # (w, b) of y = w x + b: what mlplab.dashboard.RegressionFitFigure draws the fit against

    def sample(self, n: int, seed: int) -> tuple[Tensor, Tensor]:
        rng = np.random.RandomState(seed)
        x = 2 * rng.rand(n, 1)
        y = 3 + 2 * x + rng.randn(n, 1) * self.hparams.noise
        return torch.from_numpy(x).float(), torch.from_numpy(y).float()
