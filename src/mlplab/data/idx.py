"""Read and write IDX files, the format of MNIST and Fashion-MNIST.

torchvision's MNIST readers are tied to its dataset classes and folder names; mlplab needs a
reader that takes any path (raw or ``.gz``), validates the header and reports a bad file by
name, so the few lines of the format are implemented here.

An IDX file is: two zero bytes, a type code, the number of dimensions ``n``, ``n`` big-endian
uint32 sizes, then the data in row-major order.
"""

from __future__ import annotations

import errno
import gzip
import io
import math
import os
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mlplab.errors import DataError

_TYPE_CODES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_OF_DTYPE = {dtype.newbyteorder("="): code for code, dtype in _TYPE_CODES.items()}
_GZIP_MAGIC = b"\x1f\x8b"
MAX_DECOMPRESSED_BYTES = 2**31  # 2 GiB: 40 times MNIST's largest file; refuses a gzip bomb before it fills memory


def open_maybe_gzip(path: Path) -> bytes:
    """Return the (decompressed) bytes of ``path``; ``.gz`` files must really be gzip."""
    path = Path(path)
    data = path.read_bytes()
    if path.suffix == ".gz":
        if not data.startswith(_GZIP_MAGIC):
            raise DataError(
                f"{path} is named .gz but is not a gzip file (it starts with {data[:2]!r}, gzip files start with {_GZIP_MAGIC!r})."
            )
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
                data = stream.read(MAX_DECOMPRESSED_BYTES + 1)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(f"{path} is a damaged or truncated gzip file ({err}); delete it and fetch it again.") from err
        if len(data) > MAX_DECOMPRESSED_BYTES:
            raise DataError(f"{path} decompresses to more than {MAX_DECOMPRESSED_BYTES} bytes: not an MNIST-like IDX file (a gzip bomb?).")
    return data


# decoded files kept by a process that asked for it (keep_decoded_files): (path, size, mtime) -> read-only array
_DECODED: dict[tuple[str, int, int], np.ndarray] | None = None


def keep_decoded_files() -> None:
    """From now on, keep every IDX file this process reads decoded in memory, and serve later reads of it from there.

    For the fork server of ``mlplab tune`` (:mod:`mlplab.tune.warm`): it reads the study's data set once,
    and each trial forked from it finds the decoded arrays in the memory it inherits (shared with the
    server until written, and never written: every read returns a copy) instead of reading and
    decoding the files again. A file that changed on disk (size or modification time) is read anew.
    """
    global _DECODED
    if _DECODED is None:
        _DECODED = {}


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """Read an IDX file (raw or ``.gz``) into a tensor of its stored shape and type.

    Raises:
        DataError: the file is missing, not gzip although named ``.gz``, has a wrong magic
            number, or holds fewer/more bytes than its header announces.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"IDX file {path} does not exist.")
    if _DECODED is None:
        return torch.from_numpy(_decode(path))
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DECODED:
        _DECODED[key] = _decode(path)
        _DECODED[key].flags.writeable = False
    return torch.from_numpy(_DECODED[key].copy())


def _decode(path: Path) -> np.ndarray:
    """The array of the IDX file ``path``, in native byte order (see :func:`read_idx`)."""
    data = open_maybe_gzip(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _TYPE_CODES:
        raise DataError(
            f"{path} is not an IDX file: its magic number is {data[:4].hex() or 'empty'}, expected 0000 "
            f"followed by a type code in {sorted(hex(c) for c in _TYPE_CODES)} and the number of dimensions."
        )
    dtype, ndim = _TYPE_CODES[data[2]], data[3]
    header_end = 4 + 4 * ndim
    if len(data) < header_end:
        raise DataError(f"{path} is truncated: its header announces {ndim} dimensions but the file ends after {len(data)} bytes.")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(shape) * dtype.itemsize  # (Python ints: a forged header cannot overflow it)
    actual = len(data) - header_end
    if actual != expected:
        raise DataError(
            f"{path} holds {actual} data bytes but its header (shape {shape}) announces {expected}: "
            "the file is truncated or corrupt; delete it and fetch it again."
        )
    try:
        array = np.frombuffer(data, dtype=dtype, offset=header_end).reshape(shape)
    except ValueError as err:  # an empty shape whose other dimensions multiply past what numpy can index
        raise DataError(f"{path} is corrupt: its header's shape {shape} cannot be held as an array ({err}).") from err
    return array.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike, tensor: torch.Tensor) -> Path:
    """Write ``tensor`` as an IDX file (gzip-compressed if ``path`` ends in ``.gz``), atomically.

    Used to build small IDX data sets (tests, custom data sets for subclasses of the DataModule).
    """
    path = Path(path)
    array = tensor.detach().cpu().numpy()
    code = _CODE_OF_DTYPE.get(array.dtype)
    if code is None:
        raise ValueError(f"cannot store dtype {array.dtype} in IDX; allowed: {sorted(str(d) for d in _CODE_OF_DTYPE)}.")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + array.astype(_TYPE_CODES[code], copy=False).tobytes()
    if path.suffix == ".gz":
        payload = gzip.compress(payload, mtime=0)
    atomic_write_bytes(path, payload)
    return path


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Create ``path`` all at once: ``write`` fills a temporary file beside it, which is synced and renamed over ``path``.

    Readers never see half a file, and a failure or a kill leaves any previous ``path`` as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, DataError) or err.errno is None:
            raise
        # disk full, quota, file-size limit, read-only folder: name the file and the OS's reason
        previous = f"the previous {path.name} is unchanged" if path.exists() else f"no {path.name} was written"
        raise DataError(f"cannot write {path}: {err.strerror} ({errno.errorcode.get(err.errno, err.errno)}); {previous}.") from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """:func:`atomic_write` of ``payload``."""
    atomic_write(path, lambda tmp: tmp.write_bytes(payload))
