"""Every notebook in notebooks/ runs top to bottom (small-budget mode) against the installed package."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from .conftest import REAL_DATA_DIR, ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_notebooks_are_found():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path: Path, real_mnist, monkeypatch, tmp_path):
    from mlplab.data.sources import FASHION_MNIST, ensure_dataset

    ensure_dataset(FASHION_MNIST, REAL_DATA_DIR)
    monkeypatch.setenv("MLPLAB_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("MLPLAB_DATA_DIR", str(REAL_DATA_DIR))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the kernel's tempfile.mkdtemp() folders (runs, checkpoints) end up here
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs if o.output_type == "error"]
    assert not errors
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert any(o.get("text") or o.get("data") for o in outputs)
    if any("plt.show()" in cell.source for cell in notebook.cells):  # every plotting notebook rendered its figures
        assert any(o.get("data", {}).get("image/png") for o in outputs)
