"""Per-trial overhead of ``mlplab tune``: the same small study started each ``--launch`` way, in one run.

Each launch runs the same command (the fast Fashion-MNIST config, ``--trials`` trials of ``--epochs``
epochs, no pruning, one trial at a time, a fixed sampler seed) in a fresh log folder and is timed from
the outside, start to exit. The trials' training is what each trial's log prints as
``mlplab: fit took X s``; the rest is overhead::

    overhead per trial = (wall time of mlplab tune - sum of the trials' fit times) / trials

so it includes tune's own start (imports, checking the space against the config) spread over the
trials. Both launches must give the same trials (parameters and values): the script compares their
``trials.csv`` and says so. Usage::

    python benchmarks/tune_overhead.py --trials 10 --epochs 1
"""

from __future__ import annotations

import argparse
import csv
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIT_TOOK = re.compile(r"^mlplab: fit took ([0-9.]+) s", re.MULTILINE)
COMPARED = ("number", "state", "val/acc")  # and every parameter column (those after val/acc up to "epochs")


def run_study(launch: str, trials: int, epochs: int, folder: Path) -> dict:
    """Run the study with ``launch``; its wall time, the trials' fit times and its trials table."""
    command = [
        str(Path(sys.executable).parent / "mlplab"), "tune", "--config", "configs/fast/fashion_89.yaml",
        "--space", "configs/tune/fashion_89_space.yaml", "--study", "overhead", "--n_trials", str(trials), "--workers", "1",
        "--pruner", "none", "--sampler_seed", "0", f"--trainer.max_epochs={epochs}", f"--log_dir={folder}", "--launch", launch,
    ]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"mlplab tune --launch {launch} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    study = folder / "overhead"
    fits = [float(m) for log in sorted(study.glob("trial_*/fit.log")) for m in FIT_TOOK.findall(log.read_text())]
    with (study / "trials.csv").open() as file:
        table = list(csv.DictReader(file))
    return {"wall": wall, "fits": fits, "table": table}


def trial_values(table: list[dict[str, str]]) -> list[tuple[str, ...]]:
    """Each trial's number, state, objective and parameters (not its times, processes or folders)."""
    columns = list(table[0]) if table else []
    parameters = columns[columns.index("val/acc") + 1 : columns.index("epochs")] if table else []
    return [tuple(row[c] for c in (*COMPARED, *parameters)) for row in table]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--launches", nargs="+", default=["process", "warm"])
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for launch in args.launches:
            results[launch] = run_study(launch, args.trials, args.epochs, Path(scratch) / launch)
    print(f"mlplab tune, {args.trials} trials of {args.epochs} epoch(s) each, configs/fast/fashion_89.yaml, one at a time")
    print(f"  {'launch':8s} {'wall s':>8s} {'sum of fits s':>14s} {'overhead s/trial':>17s}")
    overhead = {}
    for launch, result in results.items():
        overhead[launch] = (result["wall"] - sum(result["fits"])) / args.trials
        print(f"  {launch:8s} {result['wall']:8.1f} {sum(result['fits']):14.1f} {overhead[launch]:17.2f}")
    if {"process", "warm"} <= results.keys():
        print(f"  overhead ratio process/warm = {overhead['process'] / overhead['warm']:.2f}")
        same = trial_values(results["process"]["table"]) == trial_values(results["warm"]["table"])
        print(f"  the same trials (parameters, states, values) with both launches: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
