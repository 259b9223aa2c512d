"""Shared fixtures: tiny synthetic IDX data sets and the real data sets for end-to-end tests."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from filelock import FileLock
from lightning.pytorch import Trainer

from mlplab.data import IDXDataModule, write_idx
from mlplab.data.idx import open_maybe_gzip
from mlplab.data.sources import MNIST, DatasetSource, IDXFile, ensure_dataset

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA_DIR = ROOT / "data"
MLPLAB = str(Path(sys.executable).parent / "mlplab")
RESULT_LINE = re.compile(r"^mlplab: test/acc=(?P<acc>[0-9.]+) test/loss=(?P<loss>[0-9.]+) ckpt=(?P<ckpt>\S+)$", re.MULTILINE)
CHECKOUT_BEFORE = pytest.StashKey[dict]()
FILE_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


# whole modules that run real processes, servers or browsers on the real data: left out of `make test-fast`
SLOW_MODULES = {
    "test_e2e",
    "test_ddp",
    "test_notebooks",
    "test_dashboard",
    "test_logging_contract",
    "test_fast_dev_run",
    "test_readme",
    "test_wheel",
    "test_hydra",
    "test_compare",
}


# what may change in the checkout while the suite runs: caches and build outputs (everything else must stay as it was)
SCRATCH_NAMES = {"__pycache__", ".pytest_cache", ".ruff_cache", ".venv", ".git"}


def checkout_snapshot() -> dict[str, tuple[int, int]]:
    """Every file of the checkout outside caches, ignored ones included (logs/, data/): path -> (size, mtime)."""
    snapshot = {}
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [name for name in subfolders if name not in SCRATCH_NAMES and not name.endswith(".egg-info")]
        for name in files:
            path = Path(folder) / name
            with contextlib.suppress(FileNotFoundError):
                stat = path.lstat()
                snapshot[path.relative_to(ROOT).as_posix()] = (stat.st_size, stat.st_mtime_ns)
    return snapshot


def pytest_configure(config: pytest.Config) -> None:
    # Hypothesis keeps its files (collected constants, examples) in ./.hypothesis unless told otherwise, and collects
    # before any fixture runs: a cache folder of the system's temp directory instead, shared by the suite's runs
    os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(Path(tempfile.gettempdir()) / f"mlplab-hypothesis-{os.getuid()}"))


def pytest_sessionstart(session: pytest.Session) -> None:
    if not hasattr(session.config, "workerinput"):  # (the controlling process, once for all xdist workers)
        session.config.stash[CHECKOUT_BEFORE] = checkout_snapshot()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session when the tests changed the checkout: a test writes only under its temporary folder."""
    before = session.config.stash.get(CHECKOUT_BEFORE, None)
    if before is None:
        return
    after = checkout_snapshot()
    changed = sorted(set(after) - set(before)) + sorted(path for path in before if after.get(path, None) != before[path])
    if changed:
        shown = "\n  ".join(changed[:30])
        print(f"\nThe test session changed the checkout ({len(changed)} files created, changed or removed):\n  {shown}", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.module.__name__.rpartition(".")[2] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


def free_port() -> int:
    """A loopback port free now (the OS's pick). Another process may take it before it is used: callers retry then."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _no_fetch(scratch: Path) -> None:
    raise RuntimeError("tiny data sets are never fetched")


def make_tiny_idx(raw_dir: Path, n_train: int = 240, n_test: int = 60, gz: bool = False, seed: int = 0) -> DatasetSource:
    """Write four small, learnable MNIST-shaped IDX files and return a DatasetSource with their MD5s.

    Class ``c`` images are noise plus a bright horizontal bar at row ``2 + 2c``.
    """
    generator = torch.Generator().manual_seed(seed)
    arrays = []
    for n in (n_train, n_test):
        labels = torch.arange(n) % 10
        images = torch.randint(0, 60, (n, 28, 28), generator=generator)
        for c in range(10):
            images[labels == c, 2 + 2 * c, 4:24] = 250
        arrays += [images.to(torch.uint8), labels.to(torch.uint8)]
    files = []
    for name, array in zip(FILE_NAMES, arrays, strict=True):
        path = write_idx(raw_dir / (name + (".gz" if gz else "")), array)
        files.append(IDXFile(name, hashlib.md5(open_maybe_gzip(path)).hexdigest()))
    return DatasetSource(
        "Tiny", raw_dir.parent.name, *files, torchvision_class="MNIST", fetch_from_registry=_no_fetch, manual_hint="(test data)"
    )


def tiny_datamodule_class(source: DatasetSource) -> type[IDXDataModule]:
    return type("TinyDataModule", (IDXDataModule,), {"source": source, "classes": tuple("0123456789")})


def quiet_trainer(tmp_path: Path, **overrides) -> Trainer:
    """A Trainer for tests: no logger, progress bar or model summary, files under ``tmp_path``."""
    settings = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": tmp_path}
    return Trainer(**{**settings, **overrides})


@pytest.fixture
def tiny_dm_factory(tmp_path: Path):
    """``factory(**datamodule_kwargs)`` -> a DataModule over fresh tiny IDX files in a temp dir."""
    source = make_tiny_idx(tmp_path / "Tiny" / "raw")

    def factory(**kwargs) -> IDXDataModule:
        kwargs.setdefault("val_size", 40)
        kwargs.setdefault("batch_size", 32)
        return tiny_datamodule_class(source)(data_dir=str(tmp_path), **kwargs)

    return factory


@pytest.fixture
def scratch_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder that looks like the checkout (its configs/ and data/ linked) to run shipped configs in.

    The configs name ``data/`` and ``logs`` relative to the working folder: the runs read the real data and
    write their logs (and anything else relative) under ``tmp_path``, never into the checkout.
    """
    for name in ("configs", "data"):
        (tmp_path / name).symlink_to(ROOT / name, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def real_mnist() -> Path:
    """The real MNIST files in the repository's data/ folder (fetched if missing, MD5-verified)."""
    return ensure_dataset(MNIST, REAL_DATA_DIR)


def once_per_session(tmp_path_factory: pytest.TempPathFactory, name: str, produce: Callable[[Path], dict]) -> dict:
    """``produce(folder)`` run once per test session, by whichever xdist worker asks first; the others wait and get its result.

    pytest-xdist's recipe for a fixture shared by all workers (a file lock in the session's common temporary folder;
    https://pytest-xdist.readthedocs.io/en/stable/how-to.html). ``produce`` returns a JSON-serialisable dict; should it
    fail, every worker that asks fails with its error rather than producing it again.
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # (each worker's base folder is a child of the session's)
    result_file = root / f"{name}.json"
    with FileLock(root / f"{name}.lock"):
        if not result_file.is_file():
            folder = root / name
            folder.mkdir()
            try:
                result = {"result": produce(folder)}
            except BaseException as err:
                result = {"error": f"{type(err).__name__}: {err}"}
                raise
            finally:
                result_file.write_text(json.dumps(result))
            return result["result"]
        result = json.loads(result_file.read_text())
    if "error" in result:
        pytest.fail(f"the shared fixture {name!r} failed in another worker: {result['error']}"[:5000])
    return result["result"]


# The real-data fit that the tests which only read a run's outputs share (TensorBoard's files and server, the progress
# bar, checkpoints, reloading, predicting): 2 epochs of 100 batches of 128, validation every 50 batches, step metrics
# every 10 steps, gradient norms and histograms every 30.
MNIST_RUN = [
    "fit",
    "--config",
    "configs/mnist.yaml",
    "--trainer.max_epochs=2",
    "--trainer.limit_train_batches=100",
    "--trainer.limit_val_batches=5",
    "--trainer.log_every_n_steps=10",
    "--trainer.val_check_interval=50",
    "--gradient_norms=mlplab.callbacks.LayerGradientNorms",
    "--gradient_norms.every_n_steps=30",
    "--gradient_norms.histograms=true",
]


def fit_mnist_run(logs: Path, *extra: str) -> dict:
    """``mlplab`` with :data:`MNIST_RUN` (and ``extra``) on the real MNIST files, logging under ``logs``.

    Returns the ``logs`` and ``run`` folders, ``stdout``/``stderr``, and the printed test ``acc``, ``loss`` and ``ckpt``.
    """
    command = [MLPLAB, *MNIST_RUN, f"--trainer.logger.init_args.save_dir={logs}", f"--data.data_dir={REAL_DATA_DIR}", *extra]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    match = RESULT_LINE.search(result.stdout)
    assert match, result.stdout[-2000:]
    return {
        "logs": str(logs),
        "run": str(logs / "mnist" / "version_0"),
        "stdout": result.stdout,
        "stderr": result.stderr,
        "acc": float(match["acc"]),
        "loss": float(match["loss"]),
        "ckpt": match["ckpt"],
    }


def with_paths(run: dict) -> dict:
    return {**run, **{key: Path(run[key]) for key in ("logs", "run", "ckpt")}}


@pytest.fixture(scope="session")
def mnist_run(real_mnist, tmp_path_factory) -> dict:
    """The shared run (:func:`fit_mnist_run`), trained once per test session; tests only read it (copy it to change it)."""
    return with_paths(once_per_session(tmp_path_factory, "mnist_run", lambda folder: fit_mnist_run(folder / "logs")))
