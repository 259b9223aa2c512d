"""Every notebook in notebooks/ runs top to bottom (small-budget mode) against the installed package, and shows what it claims."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from .conftest import REAL_DATA_DIR, ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def numbers(pattern: str, text: str) -> list[float]:
    """The numbers ``pattern``'s groups capture in ``text`` (the pattern must match)."""
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"no line matches {pattern!r} in:\n{text}"
    return [float(group) for group in match.groups()]


def data_sets_and_their_statistics(text: str) -> None:
    for name in ("MNIST", "Fashion-MNIST"):
        assert f"{name}: train (55000, 1, 28, 28), val (5000, 1, 28, 28), test (10000, 1, 28, 28)" in text
    # the well-known normalisation constants of both data sets, computed from the files
    assert numbers(r"^MNIST: pixel mean ([\d.]+), std ([\d.]+)", text) == [0.1307, 0.3081]
    assert numbers(r"^Fashion-MNIST: pixel mean ([\d.]+), std ([\d.]+)", text) == [0.2859, 0.3529]
    assert numbers(r"^MNIST: (\d+) components explain 95 %", text) == [149]
    assert numbers(r"^Fashion-MNIST: (\d+) components explain 95 %", text) == [175]


def training_curves_go_down(text: str) -> None:
    losses = [float(loss) for loss in re.findall(r"^epoch \d+: train loss ([\d.]+)", text, re.MULTILINE)]
    assert len(losses) >= 2 and losses == sorted(losses, reverse=True), losses  # every epoch lowers the training loss
    assert numbers(r"^test accuracy ([\d.]+)", text)[0] > 0.6  # a short run (small-budget mode), far above chance (0.1)


def adam_leads_the_optimizers(text: str) -> None:
    rows = {name: (float(val), float(test)) for name, val, test in re.findall(r"^(\w+)\s+([\d.]+)\s+([\d.]+)$", text, re.MULTILINE)}
    assert set(rows) == {"adam", "rmsprop", "sgd"}, rows
    assert max(rows, key=lambda name: rows[name][0]) == "adam" and all(val > 0.2 for val, _ in rows.values()), rows


def dropout_fits_less_noise_and_generalises_better(text: str) -> None:
    plain = numbers(r"^dropout 0.0: train MSE ([\d.]+), test MSE ([\d.]+)", text)
    dropout = numbers(r"^dropout 0.5: train MSE ([\d.]+), test MSE ([\d.]+)", text)
    assert plain[0] < dropout[0] and dropout[1] < plain[1], (plain, dropout)


def online_sgd_finds_the_line(text: str) -> None:
    # y = 2x + 3: with the same small budget of epochs, more updates get closer
    w, b, updates = numbers(r"^online SGD\s+w=([\d.-]+) b=([\d.-]+) after (\d+) updates", text)
    assert abs(w - 2) < 0.2 and abs(b - 3) < 0.2 and updates == 1000
    assert numbers(r"^batch GD\s+w=[\d.-]+ b=[\d.-]+ after (\d+) updates", text) == [10]
    assert numbers(r"^mini-batch \(20\)\s+w=[\d.-]+ b=[\d.-]+ after (\d+) updates", text) == [50]


def saved_models_reproduce_it(text: str) -> None:
    assert "same outputs from the state_dict: True" in text and "load_from_checkpoint reproduces the model: True" in text
    assert "resumed at epoch 2 global step 40" in text
    assert numbers(r"^safetensors export, max \|difference\|: ([\d.e-]+)", text) == [0.0]
    assert numbers(r"^ONNX export, max \|difference\|: ([\d.e-]+)", text)[0] < 1e-4
    assert numbers(r"^accuracy on 256 test images: ([\d.]+)", text)[0] > 0.6


CLAIMS = {
    "01_data": data_sets_and_their_statistics,
    "02_train_and_curves": training_curves_go_down,
    "03_optimizers": adam_leads_the_optimizers,
    "04_overfitting_dropout": dropout_fits_less_noise_and_generalises_better,
    "05_minibatch_gd": online_sgd_finds_the_line,
    "06_save_load": saved_models_reproduce_it,
}


def test_every_notebook_has_its_claims_checked():
    assert [path.stem for path in NOTEBOOKS] == sorted(CLAIMS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path: Path, real_mnist, monkeypatch, tmp_path):
    from mlplab.data.sources import FASHION_MNIST, ensure_dataset

    ensure_dataset(FASHION_MNIST, REAL_DATA_DIR)
    monkeypatch.setenv("MLPLAB_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("MLPLAB_DATA_DIR", str(REAL_DATA_DIR))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the kernel's tempfile.mkdtemp() folders (runs, checkpoints) end up here
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    CLAIMS[path.stem]("".join(output.text for output in outputs if output.output_type == "stream" and output.name == "stdout"))
    if any("plt.show()" in cell.source for cell in notebook.cells):  # every plotting notebook rendered its figures
        assert any(output.get("data", {}).get("image/png") for output in outputs)
