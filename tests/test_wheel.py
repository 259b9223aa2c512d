"""The built wheel, installed into a fresh virtual environment, used from an empty folder as a user of ``pip install`` would.

The checkout's tracked and new files are copied to a temporary folder and built there (a build writes
``build/`` beside its sources). The fresh environment reuses this environment's installed packages through
a ``.pth`` line, so torch is not downloaded again; pip installs the wheel with ``--no-index`` and finds every
dependency the wheel declares already installed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from mlplab.data.sources import FASHION_MNIST, ensure_dataset
from tests.conftest import REAL_DATA_DIR, RESULT_LINE, ROOT


def run(command: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def copy_sources(destination: Path) -> Path:
    """The files git knows or would add (untracked, not ignored), links kept as links."""
    listed = run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], ROOT).stdout.split("\0")
    for name in filter(None, listed):
        source, target = ROOT / name, destination / name
        if not source.exists() and not source.is_symlink():
            continue  # (deleted in the working tree, not yet in the index)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)
    return destination


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with the wheel of this checkout installed; returns its ``bin`` folder."""
    root = tmp_path_factory.mktemp("wheel")
    sources = copy_sources(root / "src")
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(root / "dist"), str(sources)], root
    )
    (wheel,) = (root / "dist").glob("mlplab-*.whl")
    run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], root)
    python = root / "venv" / "bin" / "python"
    site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root).stdout.strip()
    (Path(site) / "reuse_installed_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([str(python), "-m", "pip", "install", "--no-index", "--quiet", str(wheel)], root)
    return root / "venv" / "bin"


def test_the_wheel_carries_the_presets_and_the_package_comes_from_it(installed, tmp_path):
    where = run([str(installed / "python"), "-c", "import mlplab; print(mlplab.__file__)"], tmp_path).stdout.strip()
    assert where.startswith(str(installed.parent)), where  # the wheel's copy, not the checkout's
    listed = run([str(installed / "mlplab"), "presets"], tmp_path).stdout.splitlines()
    names = [line.split()[0] for line in listed]
    expected = sorted(path.relative_to(ROOT / "configs").with_suffix("").as_posix() for path in (ROOT / "configs").rglob("*.yaml"))
    assert names == expected
    run([str(installed / "mlplab"), "presets", "copy", "seeds/d2l_fashion_mlp", "mine.yaml"], tmp_path)
    assert (tmp_path / "mine.yaml").read_text() == (ROOT / "configs" / "seeds" / "d2l_fashion_mlp.yaml").read_text()


def test_python_dash_m_mlplab_runs_a_preset_by_name_from_an_empty_folder(installed, tmp_path):
    ensure_dataset(FASHION_MNIST, REAL_DATA_DIR)
    empty = tmp_path / "empty"
    empty.mkdir()
    fit = [
        "fit",
        "--config",
        "seeds/d2l_fashion_mlp",
        f"--data.data_dir={REAL_DATA_DIR}",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=20",
        "--trainer.limit_val_batches=2",
        "--trainer.enable_progress_bar=false",
    ]
    result = run([str(installed / "python"), "-m", "mlplab", *fit], empty)
    match = RESULT_LINE.search(result.stdout)
    assert match and float(match["acc"]) > 0.3, result.stdout[-2000:]  # 20 SGD steps of seed 000's net: 0.435 here (chance: 0.1)
    # the preset's own logger settings, relative to the empty folder
    assert (empty / "logs" / "seed000_d2l_fashion_mlp" / "version_0" / "config.yaml").is_file()
    help_text = run([str(installed / "mlplab"), "--help"], empty).stdout
    assert help_text == run([str(installed / "python"), "-m", "mlplab", "--help"], empty).stdout
