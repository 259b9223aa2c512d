"""`mlplab sweep`: one ordinary fit per grid point, results in CSV and Markdown."""

from __future__ import annotations

import csv

from .test_faults import mlplab, tiny_args, workdir  # noqa: F401 - the fixture is used by name


def test_sweep_runs_each_combination_and_tabulates(workdir):  # noqa: F811
    result = mlplab(workdir, "sweep", "--grid", "model.optimizer.lr=0.05,0.2", "--output", "results/sweep.csv", *tiny_args(2), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mlplab sweep: 2/2 runs ok; results in results/sweep.csv and results/sweep.md" in result.stdout
    rows = list(csv.DictReader((workdir / "results" / "sweep.csv").open()))
    assert [row["model.optimizer.lr"] for row in rows] == ["0.05", "0.2"]
    for index, row in enumerate(rows):
        assert row["status"] == "ok" and 0.0 <= float(row["test/acc"]) <= 1.0 and float(row["best val/acc"]) > 0.1
        assert f"logs/tiny/version_{index}/checkpoints/" in row["ckpt"]  # each a normal run with its own folder
    markdown = (workdir / "results" / "sweep.md").read_text().splitlines()
    assert markdown[0].startswith("| model.optimizer.lr | best val/acc | test/acc |") and len(markdown) == 4


def test_bad_grid_is_a_clear_error(workdir):  # noqa: F811
    result = mlplab(workdir, "sweep", "--grid", "model.optimizer.lr", *tiny_args(1))
    assert result.returncode == 2 and "mlplab: error: --grid 'model.optimizer.lr' is not allowed; write KEY=VALUE1,VALUE2" in result.stderr
