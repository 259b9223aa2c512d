"""Per-trial overhead of ``mlplab tune``: the same small study started each ``--launch`` way, in one run.

Each launch runs the same command (the fast Fashion-MNIST config, ``--trials`` trials of ``--epochs``
epochs, no pruning, one trial at a time, a fixed sampler seed) in a fresh log folder and is timed from
the outside, start to exit. The trials' training is what each trial's log prints as
``mlplab: fit took X s``; the rest is overhead::

    overhead per trial = (wall time of mlplab tune - sum of the trials' fit times) / trials

so it includes tune's own start (imports, checking the space against the config) spread over the
trials. Both launches must give the same trials (parameters and values): the script compares their
``trials.csv`` and says so. ``--breakdown`` adds :class:`trial_phases.TrialPhases` to every trial and
prints where each launch's wall time went, in seconds per trial: tune's start, Optuna between trials,
the fork, the config, reading the data, fitting the pre-processing, the sanity validation, training
(the optimizer steps and per-epoch validation: the work a hand-written loop also does), checkpoint
writes, the end of the fit and the process's exit. Usage::

    python benchmarks/tune_overhead.py --trials 10 --epochs 1 [--breakdown]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIT_TOOK = re.compile(r"^mlplab: fit took ([0-9.]+) s", re.MULTILINE)
COMPARED = ("number", "state", "val/acc")  # and every parameter column (those after val/acc up to "epochs")


PHASES_CALLBACK = json.dumps({"class_path": "trial_phases.TrialPhases"})


def run_study(launch: str, trials: int, epochs: int, folder: Path, breakdown: bool) -> dict:
    """Run the study with ``launch``; its wall time, the trials' fit times, its trials table (and phases)."""
    command = [
        str(Path(sys.executable).parent / "mlplab"), "tune", "--config", "configs/fast/fashion_89.yaml",
        "--space", "configs/tune/fashion_89_space.yaml", "--study", "overhead", "--n_trials", str(trials), "--workers", "1",
        "--pruner", "none", "--sampler_seed", "0", f"--trainer.max_epochs={epochs}", f"--log_dir={folder}", "--launch", launch,
    ]  # fmt: skip
    env = dict(os.environ)
    if breakdown:
        command.append(f"--trainer.callbacks+={PHASES_CALLBACK}")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "benchmarks"), env.get("PYTHONPATH")]))
    started = time.time()
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"mlplab tune --launch {launch} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    study = folder / "overhead"
    fits = [float(m) for log in sorted(study.glob("trial_*/fit.log")) for m in FIT_TOOK.findall(log.read_text())]
    with (study / "trials.csv").open() as file:
        table = list(csv.DictReader(file))
    phases = study_phases(study, started, started + wall) if breakdown else None
    return {"wall": wall, "fits": fits, "table": table, "phases": phases}


def study_phases(study: Path, started: float, ended: float) -> dict[str, float]:
    """Seconds in each phase, summed over the study's trials (from Optuna's trial times and each ``phases.json``)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = optuna.load_study(study_name="overhead", storage=f"sqlite:///{study / 'study.db'}").get_trials(deepcopy=False)
    totals = dict.fromkeys(PHASES, 0.0)
    previous_end = None
    for trial in sorted(trials, key=lambda t: t.number):
        start, complete = trial.datetime_start.timestamp(), trial.datetime_complete.timestamp()
        record = json.loads((Path(trial.user_attrs["run"]) / "phases.json").read_text())
        m, s = record["marks"], record["seconds"]
        if previous_end is None:
            totals["tune's start (imports, the space checked, the study opened), once"] += start - started
        else:
            totals["Optuna between trials (recording, sampling)"] += start - previous_end
        totals["the trial started: its attributes stored, the fork"] += m["process_start"] - start
        totals["the trial's config (study loaded, arguments parsed, classes built)"] += m["config_built"] - m["process_start"]
        reading = s["setup"] - s["preprocessing"]
        totals["the data set read and split"] += reading
        totals["the pre-processing fitted (PCA)"] += s["preprocessing"]
        totals["the Trainer built, preflight, fit's set-up"] += m["sanity_start"] - m["config_built"] - s["setup"]
        totals["sanity validation"] += m["sanity_end"] - m["sanity_start"]
        totals["between sanity check and training"] += m["train_start"] - m["sanity_end"]
        loop = m["train_end"] - m["train_start"]
        totals[TRAINING] += loop - s["checkpoint_writes"]
        totals["checkpoint writes"] += s["checkpoint_writes"]
        totals["the fit's end (teardown)"] += m["fit_end"] - m["train_end"]
        totals["the process's exit, its result recorded"] += complete - m["fit_end"]
        previous_end = complete
    totals["tune's report and exit, once"] += ended - previous_end
    return totals


TRAINING = "training: optimizer steps and each epoch's validation"
PHASES = (
    "tune's start (imports, the space checked, the study opened), once",
    "Optuna between trials (recording, sampling)",
    "the trial started: its attributes stored, the fork",
    "the trial's config (study loaded, arguments parsed, classes built)",
    "the Trainer built, preflight, fit's set-up",
    "the data set read and split",
    "the pre-processing fitted (PCA)",
    "sanity validation",
    "between sanity check and training",
    TRAINING,
    "checkpoint writes",
    "the fit's end (teardown)",
    "the process's exit, its result recorded",
    "tune's report and exit, once",
)


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
    parser.add_argument("--breakdown", action="store_true", help="also time each trial's phases (see the docstring)")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for launch in args.launches:
            results[launch] = run_study(launch, args.trials, args.epochs, Path(scratch) / launch, args.breakdown)
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
    if args.breakdown:
        print_breakdown(results, args.trials)


def print_breakdown(results: dict[str, dict], trials: int) -> None:
    """Seconds per trial in each phase, per launch; everything but training is the overhead."""
    launches = list(results)
    print(f"\nwhere the time goes, seconds per trial (the once-only phases spread over the {trials} trials)")
    print(f"  {'':70s} " + " ".join(f"{launch:>8s}" for launch in launches))
    for phase in PHASES:
        print(f"  {phase:70s} " + " ".join(f"{results[launch]['phases'][phase] / trials:8.2f}" for launch in launches))
    overheads = [(sum(results[launch]["phases"].values()) - results[launch]["phases"][TRAINING]) / trials for launch in launches]
    print(f"  {'overhead: all but training':70s} " + " ".join(f"{value:8.2f}" for value in overheads))


if __name__ == "__main__":
    main()
