"""Input pre-processing fitted on the training split and carried inside the model.

Every transform mlplab offers is an affine map of the flattened input,
``((x - shift) / scale) @ projection`` (projection omitted when empty), so one small module
with three buffers represents all of them and travels in the checkpoint's ``state_dict``: test,
predict and exported models apply exactly what training fitted.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from mlplab.errors import ConfigError


class Preprocessor(nn.Module):
    """``x -> ((flatten(x) - shift) / scale) @ projection``; the identity until fitted.

    Buffers adopt the shapes found in a loaded ``state_dict``, so a checkpoint restores whatever
    transform it was trained with without the caller knowing its kind in advance.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.zeros(1))
        self.register_buffer("scale", torch.ones(1))
        self.register_buffer("projection", torch.empty(0))
        self.register_buffer("fitted", torch.tensor(False))
        self._refresh()

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        if self.is_identity:  # "none": no pass over the batch at all
            return x
        x = (x - self.shift) / self.scale
        if self.projection.numel():
            x = x @ self.projection
        return x

    def _refresh(self) -> None:
        self.is_identity = not self.projection.numel() and bool((self.shift == 0).all() and (self.scale == 1).all())

    def set_(self, shift: Tensor, scale: Tensor, projection: Tensor | None = None) -> Preprocessor:
        """Install fitted parameters (any broadcastable shapes) and mark the module fitted."""
        device = self.shift.device
        self.shift = shift.detach().reshape(-1).to(device, torch.float32)
        self.scale = scale.detach().reshape(-1).to(device, torch.float32)
        self.projection = (torch.empty(0) if projection is None else projection.detach()).to(device, torch.float32)
        self.fitted = torch.tensor(True, device=device)
        self._refresh()
        return self

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted)

    def output_dim(self, input_dim: int) -> int:
        return self.projection.shape[1] if self.projection.numel() else input_dim

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        for name, buffer in self._buffers.items():
            saved = state_dict.get(prefix + name)
            if saved is not None and buffer is not None and saved.shape != buffer.shape:
                self._buffers[name] = torch.empty_like(saved, device=buffer.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._refresh()


def pca_spectrum(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, eigenvalues (descending) and eigenvectors (columns) of the covariance of ``x`` flattened to (N, D)."""
    x = x.flatten(1).double()
    mean = x.mean(dim=0)
    centred = x - mean
    covariance = centred.T @ centred / max(1, len(x) - 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    return mean, eigenvalues.flip(0).clamp_min(0), eigenvectors.flip(1)


def _fit_none(x: Tensor, components: int | None, eps: float) -> Preprocessor:
    return Preprocessor().set_(torch.zeros(1), torch.ones(1))


def _fit_standardize(x: Tensor, components: int | None, eps: float) -> Preprocessor:
    """Centre and scale with the split's global mean and standard deviation (seed 001)."""
    x = x.flatten(1).double()
    return Preprocessor().set_(x.mean(), x.std().clamp_min(1e-12))


def _fit_scale(x: Tensor, components: int | None, eps: float) -> Preprocessor:
    """Map the split's [min, max] onto [-1, 1]."""
    low, high = x.min().double(), x.max().double()
    return Preprocessor().set_((high + low) / 2, ((high - low) / 2).clamp_min(1e-12))


def _fit_pca(x: Tensor, components: int | None, eps: float) -> Preprocessor:
    """Centre, then project onto the ``components`` leading principal axes."""
    mean, _, vectors = pca_spectrum(x)
    return Preprocessor().set_(mean, torch.ones(1), vectors[:, :components])


def _fit_pca_whiten(x: Tensor, components: int | None, eps: float) -> Preprocessor:
    """PCA, then divide each component by sqrt(eigenvalue + eps): unit variance, uncorrelated."""
    mean, values, vectors = pca_spectrum(x)
    k = components or len(values)
    return Preprocessor().set_(mean, torch.ones(1), vectors[:, :k] / (values[:k] + eps).sqrt())


def _fit_zca_whiten(x: Tensor, components: int | None, eps: float) -> Preprocessor:
    """PCA-whitening rotated back into input space (V D^-1/2 V^T): whitened, yet closest to the original image."""
    mean, values, vectors = pca_spectrum(x)
    k = components or len(values)
    v = vectors[:, :k]
    return Preprocessor().set_(mean, torch.ones(1), (v / (values[:k] + eps).sqrt()) @ v.T)


DEFAULT_WHITEN_EPS = 1e-2

PREPROCESSING: dict[str, Callable[[Tensor, int | None, float], Preprocessor]] = {
    "none": _fit_none,
    "standardize": _fit_standardize,
    "scale": _fit_scale,
    "pca": _fit_pca,
    "pca_whiten": _fit_pca_whiten,
    "zca_whiten": _fit_zca_whiten,
}
# kinds whose output has `components` features instead of the input's
REDUCING = ("pca", "pca_whiten")


def fit_preprocessor(kind: str, x: Tensor, components: int | None = None, eps: float = DEFAULT_WHITEN_EPS) -> Preprocessor:
    """Fit the pre-processing named ``kind`` on the training inputs ``x`` (N, ...).

    Args:
        kind: one of ``PREPROCESSING``.
        components: principal components kept by ``pca``/``pca_whiten`` (required there) and
            ``zca_whiten`` (default: all).
        eps: added to the eigenvalues before whitening, so near-constant directions (MNIST's
            blank border pixels) are not blown up.
    """
    if kind not in PREPROCESSING:
        raise ConfigError(f"normalize={kind!r} is not a known pre-processing; allowed: {', '.join(PREPROCESSING)}.")
    return PREPROCESSING[kind](x, components, eps)
