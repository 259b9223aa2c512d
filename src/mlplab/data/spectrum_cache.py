"""The covariance spectrum of a training split, kept on disk so that the trials of one study compute it once.

The trials of ``mlplab tune`` and ``mlplab compare`` fit on the same training split again and again,
differing in other settings (the number of PCA components among them), and each ``pca``,
``pca_whiten`` or ``zca_whiten`` fit starts with the same eigendecomposition of the split's
covariance: about a second on two cores for Fashion-MNIST's 55 000 × 784 images, in every trial.
One decomposition serves every PCA size, so a trial process given a cache folder (the tune process
passes ``<study folder>/.spectrum_cache``, see :func:`use_folder`) stores it there and the later trials load it.

An entry's key is the SHA-1 of the split's bytes together with its shape, dtype, the torch version
and the number of torch threads (a matrix product's last bits depend on how it is split among
threads), so a loaded spectrum is bit for bit what this process would compute, and a trial's
values are the same with or without the cache. Nothing else in the fit is shared. Entries are
written atomically; two trials that compute the same one at once both write the same bytes.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from mlplab.data.idx import atomic_write_bytes

Spectrum = tuple[Tensor, Tensor, Tensor]  # mean, eigenvalues (descending), eigenvectors (columns)

_folder: Path | None = None


def use_folder(folder: Path | None) -> None:
    """Keep (and look up) spectra in ``folder`` for the rest of this process; ``None``: compute every time."""
    global _folder
    _folder = folder


def key_of(x: Tensor) -> str:
    """What identifies the spectrum this process would compute from ``x``: its bytes and how it would compute."""
    digest = hashlib.sha1(f"{tuple(x.shape)} {x.dtype} torch {torch.__version__} threads {torch.get_num_threads()}".encode())
    digest.update(memoryview(x.detach().cpu().contiguous().numpy()).cast("B"))  # (hashlib releases the GIL for large buffers)
    return digest.hexdigest()


def cached(compute: Callable[[Tensor], Spectrum], x: Tensor) -> Spectrum:
    """``compute(x)``, or the stored result of the same computation when the cache folder holds it."""
    if _folder is None:
        return compute(x)
    path = _folder / f"spectrum-{key_of(x)}.pt"
    if path.is_file():
        mean, values, vectors = torch.load(path, weights_only=True)
        return mean.to(x.device), values.to(x.device), vectors.to(x.device)
    spectrum = compute(x)
    buffer = io.BytesIO()
    torch.save(tuple(t.cpu() for t in spectrum), buffer)
    _folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    return spectrum
