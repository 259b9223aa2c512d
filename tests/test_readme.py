"""The README's "Use mlplab in your own Lightning project" snippets, run exactly as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from .conftest import REAL_DATA_DIR, ROOT, make_tiny_idx


def readme_snippets() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    return dict(re.findall(r"<!-- readme-test: (\w+) -->\n```python\n(.*?)```", text, flags=re.DOTALL))


def run(snippet: str, cwd: Path) -> str:
    result = subprocess.run([sys.executable, "-c", snippet], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_readme_has_the_three_snippets():
    assert set(readme_snippets()) == {"train", "load", "subclass"}


def test_train_then_load_in_a_fresh_process(real_mnist, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "MNIST").symlink_to(REAL_DATA_DIR / "MNIST")
    snippets = readme_snippets()
    trained = run(snippets["train"], tmp_path).split()
    test_acc = float(trained[-1])
    assert test_acc > 0.85  # 100 Adam steps on MNIST
    loaded = run(snippets["load"], tmp_path)
    assert loaded.strip() == f"test accuracy {test_acc:.4f}"  # the reloaded model reproduces trainer.test


def test_subclass_for_another_idx_data_set(tmp_path):
    source = make_tiny_idx(tmp_path / "data" / "TinyDigits" / "raw")
    snippet = readme_snippets()["subclass"]
    for file in source.files:  # the README's checksums are those of these files
        assert f'IDXFile("{file.name}", "{file.md5}")' in snippet
    run(snippet + "\nassert trainer.callback_metrics['val/acc'] > 0.8, trainer.callback_metrics\n", tmp_path)
