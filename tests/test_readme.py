"""The README's "Use mlplab in your own Lightning project" snippets and docs/reuse.md's "Three ways in", run exactly as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from .conftest import REAL_DATA_DIR, ROOT, make_tiny_idx


def snippets(document: str, marker: str) -> dict[str, str]:
    """The Python blocks of ``document`` that follow a ``<!-- MARKER: NAME -->`` line, by name."""
    text = (ROOT / document).read_text()
    return dict(re.findall(rf"<!-- {marker}: (\w+) -->\n```python\n(.*?)```", text, flags=re.DOTALL))


def readme_snippets() -> dict[str, str]:
    return snippets("README.md", "readme-test")


def run(snippet: str, cwd: Path) -> str:
    result = subprocess.run([sys.executable, "-c", snippet], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_readme_has_the_three_snippets():
    assert set(readme_snippets()) == {"train", "load", "subclass"}


def test_train_then_load_in_a_fresh_process(real_mnist, tmp_path):
    found = readme_snippets()
    trained = run(found["train"], folder_with_mnist(tmp_path)).split()
    test_acc = float(trained[-1])
    assert test_acc > 0.85  # 100 Adam steps on MNIST
    loaded = run(found["load"], tmp_path)
    assert loaded.strip() == f"test accuracy {test_acc:.4f}"  # the reloaded model reproduces trainer.test


def test_subclass_for_another_idx_data_set(tmp_path):
    source = make_tiny_idx(tmp_path / "data" / "TinyDigits" / "raw")
    snippet = readme_snippets()["subclass"]
    for file in source.files:  # the README's checksums are those of these files
        assert f'IDXFile("{file.name}", "{file.md5}")' in snippet
    run(snippet + "\nassert trainer.callback_metrics['val/acc'] > 0.8, trainer.callback_metrics\n", tmp_path)


def folder_with_mnist(folder: Path) -> Path:
    (folder / "data").mkdir()
    (folder / "data" / "MNIST").symlink_to(REAL_DATA_DIR / "MNIST")
    return folder


def test_reuse_md_has_the_three_ways_in():
    assert list(snippets("docs/reuse.md", "doc-test")) == ["trainer", "lightning_cli", "hydra"]


def test_reuse_md_plain_trainer(real_mnist, tmp_path):
    printed = run(snippets("docs/reuse.md", "doc-test")["trainer"], folder_with_mnist(tmp_path))
    assert float(printed.split()[-1]) > 0.9  # 86 SGD steps with momentum on MNIST (about 0.93 here)


def test_reuse_md_own_lightning_cli(real_mnist, tmp_path):
    printed = run(snippets("docs/reuse.md", "doc-test")["lightning_cli"], folder_with_mnist(tmp_path))
    assert float(printed.split()[-1]) > 0.8  # 50 Adam steps, validated on a tenth of the validation split
    assert (tmp_path / "lightning_logs" / "version_0" / "config.yaml").is_file()  # LightningCLI's saved config


def test_reuse_md_hydra_config(real_mnist, tmp_path):
    printed = run(snippets("docs/reuse.md", "doc-test")["hydra"], folder_with_mnist(tmp_path))
    assert printed.strip().splitlines()[-1] == "reloaded LitMLP"
