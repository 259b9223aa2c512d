"""The PNG files ``mlplab predict --data.predict_dir=FOLDER`` reads: each one used, or refused by name.

Every ``*.png`` of the folder is checked before any is decoded: the PNG signature and the IHDR
header (a file that claims more than :data:`MAX_PIXELS` pixels — a decompression bomb — is refused
without decoding it). Then Pillow decodes it as one grey channel: colour (RGB, palette) and
colour-with-alpha (RGBA, grey+alpha) images are converted to grey with Pillow's luminance weights
(ITU-R 601-2) and the alpha channel is dropped; 16-bit images are scaled to [0, 1] like 8-bit ones. A file that
is not a PNG, is truncated or corrupt, or has another size than the data set's images is refused
with its name and the reason; the command then stops before predicting anything.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from mlplab.errors import DataError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_PIXELS = 4096 * 4096  # far above any image an MLP on 28x28 inputs takes; a bomb claims far more


def png_problem(path: Path, data: bytes) -> str | None:
    """Why ``data`` cannot be a usable PNG, judged from its first 33 bytes; None if its header is sound."""
    if not data.startswith(PNG_SIGNATURE):
        return f"not a PNG file (it starts with {data[:8]!r})"
    if len(data) < 33 or data[12:16] != b"IHDR":
        return "truncated or corrupt PNG (no IHDR header)"
    width, height = struct.unpack(">II", data[16:24])
    if width * height > MAX_PIXELS:
        return f"claims {width}x{height} pixels, above the limit of {MAX_PIXELS} (a decompression bomb?)"
    return None


def decode_grey(path: Path, data: bytes) -> Tensor:
    """One grey channel in [0, 1]; DataError naming the file when Pillow cannot decode it.

    (Pillow rather than ``torchvision.io``: torchvision 0.29 deprecates its image decoders.)
    """
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I"):
                array = np.asarray(image, dtype=np.float32) / 65535.0
            else:
                array = np.asarray(image.convert("L"), dtype=np.float32) / 255.0  # luminance; alpha dropped
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: truncated or corrupt PNG ({str(err).strip() or type(err).__name__})") from err
    return torch.from_numpy(array.copy()).unsqueeze(0)


def read_predict_images(folder: str | Path, input_shape: tuple[int, ...]) -> tuple[list[str], Tensor]:
    """The file names and a ``(N, *input_shape)`` tensor of the folder's PNG files; DataError listing every refused file."""
    paths = sorted(Path(folder).glob("*.png"))
    if not paths:
        raise DataError(f"data.predict_dir={str(folder)!r} holds no .png files.")
    images, problems = [], []
    for path in paths:
        data = path.read_bytes()
        problem = png_problem(path, data)
        if problem is None:
            try:
                image = decode_grey(path, data)
            except DataError as err:
                problems.append(str(err))
                continue
            if tuple(image.shape) != tuple(input_shape):
                problem = f"is {tuple(image.shape[1:])} pixels; this data set's images are {tuple(input_shape[1:])}"
            else:
                images.append(image)
                continue
        problems.append(f"{path}: {problem}")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise DataError(
            f"{len(problems)} of the {len(paths)} .png files in data.predict_dir={str(folder)!r} cannot be used: {shown}. "
            f"Give {input_shape[1]}x{input_shape[2]} PNG images (grey, colour or 16-bit; colour is converted to grey)."
        )
    return [path.name for path in paths], torch.stack(images)
