"""Input pre-processing fitted on the training split and carried inside the model.

Every transform mlplab offers is an affine map of the flattened input,
``((x - shift) / scale) @ projection`` (projection omitted when empty), optionally preceded by
deskewing each image (:func:`deskew_images`), so one small module with a few buffers represents
all of them and travels in the checkpoint's ``state_dict``: test, predict and exported models
apply exactly what training fitted.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlplab.data import spectrum_cache
from mlplab.errors import ConfigError


def deskew_images(images: Tensor) -> Tensor:
    """Shear each image so its ink has no slant, and move its centre of mass to the image centre.

    The classic MNIST pre-processing (LeCun et al.'s benchmark table lists "deskewing" for many
    methods): from each image's second moments, the shear ``alpha = cov(row, col) / var(row)``
    that makes the ink's principal axis vertical; the image is resampled bilinearly at
    ``col + alpha * (row - centre)``, centred on its centre of mass. Per-sample parameters on a
    batch need the sampling grid built by hand (as in :mod:`mlplab.data.augment`); torchvision has
    no moment-based deskew.

    Args:
        images: ``(N, 1, H, W)`` (or ``(N, H, W)``) non-negative intensities, background 0.

    Returns:
        The deskewed images, same shape. A blank image stays blank.
    """
    shape = images.shape
    x = images.reshape(-1, 1, shape[-2], shape[-1])
    n, _, h, w = x.shape
    rows = torch.arange(h, dtype=x.dtype, device=x.device).view(1, h, 1)
    cols = torch.arange(w, dtype=x.dtype, device=x.device).view(1, 1, w)
    ink = x[:, 0]
    mass = ink.sum((1, 2)).clamp_min(1e-6)
    row_mean = (ink * rows).sum((1, 2)) / mass
    col_mean = (ink * cols).sum((1, 2)) / mass
    row_offset = rows - row_mean.view(-1, 1, 1)
    row_var = (ink * row_offset**2).sum((1, 2)) / mass
    covariance = (ink * row_offset * (cols - col_mean.view(-1, 1, 1))).sum((1, 2)) / mass
    alpha = covariance / row_var.clamp_min(1e-6)
    # theta maps output (x=col, y=row) in [-1, 1] (align_corners=False) to input coordinates
    zero, one = torch.zeros_like(alpha), torch.ones_like(alpha)
    theta = torch.stack(
        [
            torch.stack([one, alpha * h / w, (2 * col_mean + 1) / w - 1], 1),
            torch.stack([zero, one, (2 * row_mean + 1) / h - 1], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False).reshape(shape)


class Preprocessor(nn.Module):
    """``x -> ((flatten(deskew(x)) - shift) / scale) @ projection``; the identity until fitted.

    Deskewing (:func:`deskew_images`) runs only when ``deskew_shape`` holds the image size
    ``(H, W)``; flat ``(N, H*W)`` inputs are reshaped to images for it.
    Buffers adopt the shapes found in a loaded ``state_dict``, so a checkpoint restores whatever
    transform it was trained with without the caller knowing its kind in advance.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.zeros(1))
        self.register_buffer("scale", torch.ones(1))
        self.register_buffer("projection", torch.empty(0))
        self.register_buffer("deskew_shape", torch.empty(0, dtype=torch.long))
        self.register_buffer("fitted", torch.tensor(False))
        self._refresh()

    def forward(self, x: Tensor) -> Tensor:
        if self.image_size is not None:
            x = deskew_images(x.reshape(-1, 1, *self.image_size))
        x = x.flatten(1)
        if self.is_affine_identity:  # "none": no pass over the batch at all
            return x
        x = (x - self.shift) / self.scale
        if self.projection.numel():
            x = x @ self.projection
        return x

    def _refresh(self) -> None:
        # plain attributes: read at every step, where buffer reads and .tolist() would cost more
        self.image_size = tuple(self.deskew_shape.tolist()) if self.deskew_shape.numel() else None
        self.is_affine_identity = not self.projection.numel() and bool((self.shift == 0).all() and (self.scale == 1).all())
        self.is_identity = self.is_affine_identity and self.image_size is None

    def deskew_first(self, image_size: tuple[int, int]) -> Preprocessor:
        """Deskew inputs as ``image_size`` images before the affine map (see :func:`deskew_images`)."""
        self.deskew_shape = torch.tensor(image_size, dtype=torch.long, device=self.shift.device)
        self._refresh()
        return self

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

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        for name, buffer in self._buffers.items():
            saved = state_dict.get(prefix + name)
            if saved is not None and buffer is not None and saved.shape != buffer.shape:
                self._buffers[name] = torch.empty_like(saved, device=buffer.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        if prefix + "deskew_shape" in missing_keys:  # saved before deskewing existed: no deskewing
            missing_keys.remove(prefix + "deskew_shape")
        self._refresh()


def pca_spectrum(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, eigenvalues (descending) and eigenvectors (columns) of the covariance of ``x`` flattened to (N, D).

    Loaded from the study's cache instead when a trial of ``mlplab tune`` already computed it (:mod:`~mlplab.data.spectrum_cache`).
    """
    return spectrum_cache.cached(_compute_spectrum, x)


def _compute_spectrum(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
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
# kinds that read `components` at all (zca_whiten keeps the input size but may drop components)
TAKES_COMPONENTS = (*REDUCING, "zca_whiten")


def fit_preprocessor(
    kind: str, x: Tensor, components: int | None = None, eps: float = DEFAULT_WHITEN_EPS, deskew: bool = False
) -> Preprocessor:
    """Fit the pre-processing named ``kind`` on the training inputs ``x`` (N, ...).

    Args:
        kind: one of ``PREPROCESSING``.
        components: principal components kept by ``pca``/``pca_whiten`` (required there) and
            ``zca_whiten`` (default: all).
        eps: added to the eigenvalues before whitening, so near-constant directions (MNIST's
            blank border pixels) are not blown up.
        deskew: deskew every image first (``x`` must be ``(N, 1, H, W)`` images); ``kind`` is then
            fitted on the deskewed images.
    """
    if kind not in PREPROCESSING:
        raise ConfigError(f"normalize={kind!r} is not a known pre-processing; allowed: {', '.join(PREPROCESSING)}.")
    if not deskew:
        return PREPROCESSING[kind](x, components, eps)
    if x.dim() != 4 or x.shape[1] != 1:
        raise ConfigError(f"deskew=True needs single-channel images (N, 1, H, W); these inputs have shape {tuple(x.shape)}.")
    # in chunks: the sampling grid for the whole training set at once would take twice the images' memory
    deskewed = torch.cat([deskew_images(chunk) for chunk in x.split(8192)])
    return PREPROCESSING[kind](deskewed, components, eps).deskew_first((x.shape[2], x.shape[3]))
