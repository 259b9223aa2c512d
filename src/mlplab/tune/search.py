"""The search of ``mlplab tune``, after its options: the space, the study, one process per trial, the report.

The data flow one way: load the space (:mod:`~mlplab.tune.space`), check it against the config
(:mod:`~mlplab.tune.report`), open the study (:mod:`~mlplab.tune.study`), start and wait for each trial's
process (:mod:`~mlplab.tune.launch`), write the tables and ``best.yaml`` (:mod:`~mlplab.tune.report`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from mlplab.cli.lightning_cli import MLPLabCLI
from mlplab.errors import ConfigError
from mlplab.tune import report
from mlplab.tune.launch import TrialLauncher
from mlplab.tune.space import Parameter, as_override, grid_space, load_space
from mlplab.tune.storage import embedded_url, shown
from mlplab.tune.study import COUNTED_STATES, counted_trials, open_study

# Trainer arguments whose values may make a trial run several processes (Lightning's launcher re-runs the command)
MULTI_PROCESS_KEYS = ("trainer.devices", "trainer.num_nodes", "trainer.strategy")
SPECTRUM_CACHE = ".spectrum_cache"  # the study's PCA decompositions, computed once for all its trials (mlplab.data.spectrum_cache)


@dataclass
class TuneRun:
    """What every trial of this process shares: the options, the study's folder and the launcher of trial processes."""

    options: argparse.Namespace
    fit_args: list[str]
    space: list[Parameter]
    folder: Path
    storage_url: str
    launcher: TrialLauncher
    plain_processes: bool  # trials of several processes start as new processes (see mlplab.tune.launch)
    test_after_fit: bool = False  # mlplab compare tests each run's best checkpoint; a tune trial needs only validation

    def run_name(self, trial: optuna.Trial, values: dict[str, Any]) -> str:
        """The trial's run folder under the study's folder (its TensorBoard version)."""
        return f"trial_{trial.number:04d}"

    def overrides(self, values: dict[str, Any]) -> list[str]:
        """What the trial's values add to ``mlplab fit``'s arguments."""
        return [as_override(key, value) for key, value in values.items()]

    @property
    def interrupted(self) -> bool:
        return self.launcher.ctrl_c.requested.is_set()

    def objective(self, trial: optuna.Trial) -> float:
        """Run the trial's ``mlplab fit`` process; its best validation value of ``--metric``.

        A trial process that fails (a refused combination, a diverged loss, a crash) returns NaN, which
        Optuna records as a failed trial while the study goes on; the one-line reason is the trial's
        ``reason`` attribute. (Raising instead would make Optuna log a traceback of this function.)
        """
        values = {p.key: p.suggest(trial) for p in self.space}
        version = self.run_name(trial, values)
        run_dir = self.folder / version
        run_dir.mkdir(parents=True, exist_ok=True)
        result_file = run_dir / "trial_result.json"
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("process", os.getpid())
        trial.set_user_attr("run", str(run_dir))
        if self.interrupted:  # Ctrl-C came after the last trial ended and before this one started
            return self._failed(trial, run_dir, f"interrupted (Ctrl-C) before it started; the study stops here (run: {run_dir})")
        logger = {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": str(self.folder.parent), "name": self.folder.name, "version": version},
        }
        argv = [
            "fit", *self.fit_args, *self.overrides(values),
            f"--trainer.logger={json.dumps(logger)}", "--trainer.enable_progress_bar=false", f"--test_after_fit={str(self.test_after_fit).lower()}",
        ]  # fmt: skip
        spec = {
            "storage": self.storage_url, "study": trial.study.study_name, "trial_id": trial._trial_id,
            "metric": self.options.metric, "direction": self.options.direction, "result_file": str(result_file),
            "pruner": self.options.pruner, "pruner_startup_trials": self.options.pruner_startup_trials,
            "spectrum_cache": str(self.folder / SPECTRUM_CACHE),
        }  # fmt: skip
        # (Trial._trial_id: the storage's key of this trial, what a second process needs to report to it; Optuna
        # has no public accessor for it on a running trial)
        plain = self.plain_processes or any(key in values for key in MULTI_PROCESS_KEYS)
        process = self.launcher.start(argv, spec, run_dir / "fit.log", plain=plain)
        trial.set_user_attr("trial_process", process.pid)
        returncode = process.wait()
        outcome = json.loads(result_file.read_text()) if result_file.is_file() else {}
        for key in ("epochs", "fit_seconds", "test"):
            trial.set_user_attr(key, outcome.get(key))
        if returncode == 0 and outcome.get("pruned_at") is not None:
            trial.set_user_attr("pruned_at", outcome["pruned_at"])
            raise optuna.TrialPruned(f"pruned after epoch {outcome['pruned_at']}")
        if returncode == 0 and outcome.get("objective") is not None:
            return float(outcome["objective"])
        if self.interrupted:
            return self._failed(trial, run_dir, f"interrupted (Ctrl-C); the run's last.ckpt is in {run_dir / 'checkpoints'}")
        return self._failed(trial, run_dir, failure_reason(returncode, run_dir / "fit.log", self.options.metric))

    def _failed(self, trial: optuna.Trial, run_dir: Path, reason: str) -> float:
        trial.set_user_attr("reason", reason)
        if self.interrupted:
            trial.study.stop()  # no new trials after Ctrl-C (Optuna allows stop() inside the objective)
        else:
            print(f"mlplab tune: trial {trial.number} failed: {reason} (log: {run_dir / 'fit.log'})", file=sys.stderr, flush=True)
        return float("nan")

    def stop_when_interrupted(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Optuna callback after every trial: no new trial once Ctrl-C was pressed (whichever trial saw it)."""
        if self.interrupted:
            study.stop()


def failure_reason(returncode: int, log_path: Path, metric: str) -> str:
    """One line: the trial's ``mlplab: error:`` message, the signal that killed it, or its last output line."""
    if returncode < 0:
        return f"the trial process was killed by {signal.Signals(-returncode).name}"
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("mlplab: error:")]
    if errors:
        return errors[-1].removeprefix("mlplab: error:").strip()
    if returncode == 0:
        return f"the run finished without logging {metric} at any validation"
    return f"exit status {returncode}: {lines[-1] if lines else 'no output'}"


def run_search(options: argparse.Namespace, fit_args: list[str], launcher: TrialLauncher) -> None:
    """The study of ``options`` with trials of ``mlplab fit fit_args``, started by ``launcher``; exits as :func:`report.finish` says."""
    # the heartbeat that marks a dead process's trial failed is "experimental" in Optuna 5 (shipped since 2.9)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    space = load_space(options.space)
    if options.n_trials is None:
        if options.sampler != "grid":
            raise ConfigError("--n_trials is required (the number of trials the study holds when done); only --sampler grid has a default.")
        options.n_trials = report.grid_size(grid_space(space, options.space))
    base_config = report.check_space_against_config(fit_args, space, options.space, options.metric)
    folder = Path(options.log_dir) / options.study
    created = not folder.exists()
    url = options.storage or embedded_url(folder)
    try:
        study = open_study(options, url, space)
    except ConfigError:
        if created:  # a refused command leaves nothing behind
            report.remove_if_empty(folder)
        raise
    tune = TuneRun(options, fit_args, space, folder, url, launcher, runs_several_processes(base_config))
    with report.quiet_lightning():  # (this process only builds configs; trials log as mlplab fit does)
        print(
            f"mlplab tune: study {options.study!r} in {shown(url)}: {counted_trials(study)}/{options.n_trials} trials so far; "
            f"{options.workers} at a time here; trials in {folder}/trial_NNNN. Other processes join with the same --study and --storage.",
            flush=True,
        )
        optuna.storages.fail_stale_trials(study)  # trials of a process that died (missed heartbeats) count as failed
        if counted_trials(study) < options.n_trials and not tune.interrupted:
            study.optimize(
                tune.objective,
                n_jobs=options.workers,
                timeout=options.timeout,
                callbacks=[optuna.study.MaxTrialsCallback(options.n_trials, states=COUNTED_STATES), tune.stop_when_interrupted],
            )
        report.finish(study, space, folder, fit_args, base_config, options, interrupted=tune.interrupted)


def runs_several_processes(base: MLPLabCLI) -> bool:
    """Whether the base config's Trainer runs on several devices or nodes (its trials then start as new processes)."""
    return base.trainer.num_devices > 1 or base.trainer.num_nodes > 1
