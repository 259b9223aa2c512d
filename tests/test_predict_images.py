"""Every file `mlplab predict --data.predict_dir` reads is used or refused in one line naming it."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mlplab.data.images import MAX_PIXELS, read_predict_images
from mlplab.errors import DataError

from .test_faults import error_paragraph, mlplab, tiny_args, workdir  # noqa: F401 - the fixture is used by name

SHAPE = (1, 28, 28)
GREY = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)


def save(folder: Path, name: str, array: np.ndarray, mode: str | None = None) -> Path:
    path = folder / name
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def test_grey_colour_alpha_and_16_bit_images_are_used(tmp_path):
    save(tmp_path, "a_grey.png", GREY)
    save(tmp_path, "b_rgb.png", np.stack([GREY] * 3, axis=-1))
    save(tmp_path, "c_rgba.png", np.stack([GREY] * 3 + [np.full_like(GREY, 7)], axis=-1))
    Image.fromarray(GREY.astype(np.uint16) * 257).save(tmp_path / "d_16bit.png")  # I;16: the same values at 16 bits
    names, images = read_predict_images(tmp_path, SHAPE)
    assert names == ["a_grey.png", "b_rgb.png", "c_rgba.png", "d_16bit.png"]
    expected = torch.from_numpy(GREY).float().div(255).unsqueeze(0)
    for image in images:  # grey as it was; colour of equal channels converts to the same grey; alpha dropped
        assert torch.allclose(image, expected, atol=1 / 255 + 1e-6)


def refusal(folder: Path) -> str:
    with pytest.raises(DataError) as err:
        read_predict_images(folder, SHAPE)
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.mark.parametrize(
    ("name", "make", "reason"),
    [
        ("gif.png", lambda p: p.write_bytes(b"GIF89a" + bytes(100)), "not a PNG file (it starts with b'GIF89a"),
        ("empty.png", lambda p: p.write_bytes(b""), "not a PNG file"),
        ("cut.png", lambda p: p.write_bytes(_png_bytes(p)[:60]), "truncated or corrupt PNG"),
        ("header_only.png", lambda p: p.write_bytes(_png_bytes(p)[:20]), "truncated or corrupt PNG (no IHDR header)"),
        (
            "big.png",
            lambda p: save(p.parent, p.name, np.zeros((32, 28), dtype=np.uint8)),
            "is (32, 28) pixels; this data set's images are (28, 28)",
        ),
        (
            "bomb.png",
            lambda p: p.write_bytes(_bomb(p)),
            f"claims 100000x100000 pixels, above the limit of {MAX_PIXELS} (a decompression bomb?)",
        ),
    ],
)
def test_unusable_files_are_refused_by_name(tmp_path, name, make, reason):
    save(tmp_path, "good.png", GREY)
    make(tmp_path / name)
    message = refusal(tmp_path)
    assert f"1 of the 2 .png files in data.predict_dir='{tmp_path}' cannot be used: {tmp_path / name}: {reason}" in message


def _png_bytes(path: Path) -> bytes:
    scratch = path.with_suffix(".tmp")
    Image.fromarray(GREY).save(scratch, format="PNG")
    data = scratch.read_bytes()
    scratch.unlink()
    return data


def _bomb(path: Path) -> bytes:
    data = bytearray(_png_bytes(path))
    data[16:24] = struct.pack(">II", 100_000, 100_000)  # the header claims 10^10 pixels
    return bytes(data)


@pytest.mark.slow
def test_predict_with_a_bad_file_stops_in_one_line_and_writes_nothing(workdir):  # noqa: F811
    fit = mlplab(workdir, "fit", *tiny_args(1), "--test_after_fit=false")
    assert fit.returncode == 0, fit.stderr[-3000:]
    pngs = workdir / "pngs"
    pngs.mkdir()
    save(pngs, "ok.png", GREY)
    (pngs / "notes.png").write_text("these are not pixels")
    before = sorted(p.relative_to(workdir) for p in (workdir / "logs").rglob("*"))
    result = mlplab(
        workdir, "predict", *tiny_args(1), "--ckpt_path=logs/tiny/version_0/checkpoints/last.ckpt",
        f"--data.predict_dir={pngs}", "--prediction_writer.output=out.csv",
    )  # fmt: skip
    line = error_paragraph(result)
    assert f"{pngs / 'notes.png'}: not a PNG file" in line
    assert not (workdir / "out.csv").exists()
    assert sorted(p.relative_to(workdir) for p in (workdir / "logs").rglob("*")) == before  # no new log folder
