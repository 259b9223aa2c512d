"""Property-based fuzzing (hypothesis) of the readers that take files from outside: IDX, gzip, PNG.

Every input either loads correctly or raises mlplab's own DataError; no other exception, no hang (each read
runs under an alarm: one that takes over 10 s, thousands of times what a read of these sizes needs, fails the test).
Valid files are generated, then truncated or have bytes overwritten; raw random bytes too.
FUZZ_EXAMPLES inputs per test (docs/errors.md states the total a CI run tries).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mlplab.data.idx import read_idx, write_idx
from mlplab.data.images import read_predict_images
from mlplab.errors import DataError

FUZZ_EXAMPLES = 300
# (no hypothesis deadline: it measures every example against a tight time and fails on a busy machine; `bounded` below
# catches a hang instead)
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
HANG_SECONDS = 10
DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.float32, torch.float64)


@st.composite
def idx_bytes(draw) -> tuple[bytes, torch.Tensor]:
    """A valid IDX file of a random small tensor, and the tensor."""
    shape = draw(st.lists(st.integers(0, 5), min_size=0, max_size=3))
    dtype = draw(st.sampled_from(DTYPES))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))  # values decided by hypothesis too
    tensor = (torch.rand(shape, generator=generator) * 100).to(dtype)
    with tempfile.TemporaryDirectory() as folder:
        path = write_idx(Path(folder) / "x.idx", tensor)
        return path.read_bytes(), tensor


@st.composite
def damaged(draw, data: bytes) -> bytes:
    """``data`` cut short, or with a few bytes overwritten, or with bytes appended."""
    kind = draw(st.sampled_from(("truncate", "overwrite", "append")))
    if kind == "truncate" and data:
        return data[: draw(st.integers(0, len(data) - 1))]
    if kind == "append":
        return data + draw(st.binary(min_size=1, max_size=16))
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        if out:
            out[draw(st.integers(0, len(out) - 1))] = draw(st.integers(0, 255))
    return bytes(out)


class ReaderHung(Exception):
    """A read that did not end within HANG_SECONDS."""


@contextlib.contextmanager
def bounded(data: bytes) -> Iterator[None]:
    """Raise ReaderHung in the block (the reader's own code) when it runs for HANG_SECONDS: a hang fails, it never blocks the suite."""

    def hung(signum, frame):
        raise ReaderHung(f"no result after {HANG_SECONDS} s for {len(data)} input bytes starting {data[:40]!r}")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, HANG_SECONDS)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def load(name: str, data: bytes) -> torch.Tensor | None:
    """read_idx of ``data`` saved as ``name``: the tensor, or None after a DataError (anything else fails the test)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        try:
            with bounded(data):
                return read_idx(path)
        except DataError:
            return None


@FUZZ
@given(idx_bytes())
def test_valid_idx_files_load_exactly(case):
    data, tensor = case
    assert torch.equal(load("x.idx", data), tensor)
    assert torch.equal(load("x.idx.gz", gzip.compress(data, mtime=0)), tensor)


@FUZZ
@given(st.data())
def test_damaged_idx_files_load_or_raise_data_error(data):
    raw, _ = data.draw(idx_bytes())
    broken = data.draw(damaged(raw))
    tensor = load("x.idx", broken)
    assert tensor is None or tensor.numel() * tensor.element_size() <= len(broken)


@FUZZ
@given(st.data())
def test_damaged_gzip_streams_load_or_raise_data_error(data):
    raw, _ = data.draw(idx_bytes())
    load("x.idx.gz", data.draw(damaged(gzip.compress(raw, mtime=0))))


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes_load_or_raise_data_error(blob):
    load("x.idx", blob)
    load("x.idx.gz", blob)
    load("x.idx.gz", b"\x1f\x8b" + blob)  # past the gzip magic check, into the decompressor


@st.composite
def png_bytes(draw) -> bytes:
    mode = draw(st.sampled_from(("L", "RGB", "RGBA", "LA", "I;16", "P")))
    size = draw(st.sampled_from(((28, 28), (28, 27), (1, 1))))
    channels = {"L": 1, "RGB": 3, "RGBA": 4, "LA": 2, "I;16": 1, "P": 1}[mode]
    array = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).integers(0, 255, (size[1], size[0], channels), dtype=np.uint8)
    image = Image.fromarray(array.squeeze(-1) if channels == 1 else array, mode="L" if channels == 1 else None)
    if mode in ("LA", "P", "I;16"):
        image = image.convert(mode if mode != "I;16" else "I").convert(mode) if mode != "LA" else Image.fromarray(array, mode="LA")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def predict_read(data: bytes) -> torch.Tensor | None:
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "x.png").write_bytes(data)
        try:
            with bounded(data):
                return read_predict_images(folder, (1, 28, 28))[1]
        except DataError:
            return None


@FUZZ
@given(png_bytes())
def test_generated_pngs_are_used_or_refused_for_their_size(data):
    images = predict_read(data)
    width, height = Image.open(io.BytesIO(data)).size
    assert (images is not None) == ((width, height) == (28, 28))
    if images is not None:
        assert images.shape == (1, 1, 28, 28) and images.min() >= 0.0 and images.max() <= 1.0


@FUZZ
@given(st.data())
def test_damaged_pngs_are_used_or_refused(data):
    images = predict_read(data.draw(damaged(data.draw(png_bytes()))))
    assert images is None or (images.shape == (1, 1, 28, 28) and torch.isfinite(images).all())


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_as_png_are_refused(blob):
    predict_read(b"\x89PNG\r\n\x1a\n" + blob)  # past the signature check, into the decoder: any error but DataError fails
    assert predict_read(blob) is None or blob.startswith(b"\x89PNG")
