"""``mlplab sweep``: a small grid of ordinary ``mlplab fit`` runs and a table of their results.

Each combination runs sequentially as its own ``mlplab fit`` process (own ``version_N`` folder,
own TensorBoard run with its hparams), so every run is exactly what the same command line would
give by hand. The results go to a CSV and a Markdown table. This is deliberately small: for
parallel or adaptive searches use Lightning's multi-process launchers or a tuner such as Optuna
around ``mlplab fit`` (see the README), not a home-made scheduler.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from mlplab.data.idx import atomic_write_bytes
from mlplab.errors import ConfigError

RESULT = re.compile(r"^mlplab: (?P<metrics>(?:\S+=\S+ )*)ckpt=(?P<ckpt>.+)$", re.MULTILINE)
FIT_TIME = re.compile(r"mlplab: fit took (?P<seconds>[0-9.]+) s \((?P<epochs>\d+) epochs")


def parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    """``["model.optimizer.lr=0.1,0.01", ...]`` -> ``{"model.optimizer.lr": ["0.1", "0.01"], ...}``."""
    grid = {}
    for item in items:
        key, _, values = item.partition("=")
        choices = [v for v in values.split(",") if v]
        if not key or not choices:
            raise ConfigError(f"--grid {item!r} is not allowed; write KEY=VALUE1,VALUE2 (e.g. --grid model.optimizer.lr=0.1,0.01).")
        grid[key.removeprefix("--")] = choices
    return grid


def run_one(settings: dict[str, str], fit_args: Sequence[str]) -> dict[str, str]:
    """One ``mlplab fit`` with ``settings`` on top of ``fit_args``; its printed metrics, fit time and checkpoint."""
    command = [sys.executable, "-m", "mlplab.cli", "fit", *fit_args, *(f"--{key}={value}" for key, value in settings.items())]
    print("mlplab sweep:", " ".join(command[3:]), flush=True)
    result = subprocess.run(command, capture_output=True, text=True)
    row = dict(settings)
    match, timing = RESULT.search(result.stdout), FIT_TIME.search(result.stdout + result.stderr)
    if result.returncode != 0 or match is None:
        errors = [line for line in result.stderr.splitlines() if line.startswith("mlplab: error:")]
        row["status"] = f"failed (exit {result.returncode}): {errors[-1] if errors else result.stderr.strip()[-300:]}"
        return row
    row.update(best_validation_scores(match["ckpt"]))  # what to select on: the test columns are for reporting
    row.update(dict(pair.split("=", 1) for pair in match["metrics"].split()))
    row["fit_seconds"] = timing["seconds"] if timing else ""
    row["epochs"] = timing["epochs"] if timing else ""
    row["ckpt"] = match["ckpt"]
    row["status"] = "ok"
    return row


def best_validation_scores(ckpt: str) -> dict[str, str]:
    """``{"best val/acc": "0.9812"}`` from the ModelCheckpoint states stored in the checkpoint."""
    if not Path(ckpt).is_file():
        return {}
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    return {
        f"best {value['monitor']}": f"{float(value['best_model_score']):.4f}"
        for key, value in state.get("callbacks", {}).items()
        if key.startswith("ModelCheckpoint") and value.get("monitor") and value.get("best_model_score") is not None
    }


def write_tables(rows: list[dict[str, str]], output: Path) -> tuple[Path, Path]:
    """``output`` as CSV and the same table as Markdown beside it (``.md``); both written atomically."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    csv_path, md_path = output.with_suffix(".csv"), output.with_suffix(".md")
    atomic_write_bytes(csv_path, buffer.getvalue().encode())
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row.get(c, "") for c in columns) + " |" for row in rows]
    atomic_write_bytes(md_path, ("\n".join(lines) + "\n").encode())
    return csv_path, md_path


def sweep_command(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="mlplab sweep",
        description="Run `mlplab fit` once per combination of --grid values (sequentially) and tabulate the results. "
        "Other arguments (e.g. --config) are passed to every run.",
    )
    parser.add_argument("--grid", action="append", required=True, metavar="KEY=V1,V2", help="An option and its values; repeat for a grid.")
    parser.add_argument("--output", default="sweep.csv", help="Results table (CSV; a Markdown copy goes beside it as .md).")
    options, fit_args = parser.parse_known_args(list(argv))
    grid = parse_grid(options.grid)
    rows = [run_one(dict(zip(grid, values, strict=True)), fit_args) for values in itertools.product(*grid.values())]
    csv_path, md_path = write_tables(rows, Path(options.output))
    print(f"mlplab sweep: {sum(r['status'] == 'ok' for r in rows)}/{len(rows)} runs ok; results in {csv_path} and {md_path}", flush=True)
    if any(r["status"] != "ok" for r in rows):
        sys.exit(1)
