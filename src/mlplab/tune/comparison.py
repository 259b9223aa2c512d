"""The comparison of ``mlplab compare`` after its options: check the variants, run the missing pairs, write the results.

The study engine is ``mlplab tune``'s (:class:`~mlplab.tune.search.TuneRun`): :class:`ComparisonRun` only says
what a run's arguments and folder are, and that a (variant, seed) pair runs once.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from mlplab.cli.lightning_cli import MLPLabCLI
from mlplab.errors import ConfigError, MLPLabError
from mlplab.tune import report
from mlplab.tune.comparison_report import write_comparison
from mlplab.tune.launch import TrialLauncher
from mlplab.tune.search import TuneRun, runs_several_processes
from mlplab.tune.space import Parameter
from mlplab.tune.storage import embedded_url, shown
from mlplab.tune.study import open_study
from mlplab.tune.variants import Variant, load_variants

PARAMETERS = ("variant", "seed")
LOWER_IS_BETTER = ("loss", "mse", "mae")  # metrics whose smallest value is best (the others: accuracy, F1, R²)


def seed_arguments(seed: int) -> list[str]:
    """What sets a run's seed: Lightning's seed_everything (weights, dropout, augmentation) and the data's (split, shuffle)."""
    return [f"--seed_everything={seed}", f"--data.seed={seed}"]


def pair(trial: optuna.trial.FrozenTrial) -> tuple[str, int] | None:
    params = trial.params or trial.system_attrs.get("fixed_params", {})
    return (params["variant"], int(params["seed"])) if all(name in params for name in PARAMETERS) else None


def run_comparison(options: argparse.Namespace, fit_args: list[str], launcher: TrialLauncher, started: float) -> None:
    """Check every variant, open the study, run the missing (variant, seed) pairs, write the results; exit 130 / 1 as the runs ended.

    ``started``: when the checks began (after the imports, which any ``mlplab`` process pays).
    """
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    variants = {variant.name: variant for variant in load_variants(options.variants)}
    base = check_variants_against_config(fit_args, list(variants.values()), options)
    headline = base.model.headline_key.removeprefix("val/")
    options.metric = options.metric or f"test/{headline}"
    if not options.metric.startswith("test/"):
        raise ConfigError(f"--metric {options.metric!r} is not a test metric; mlplab compare compares test/ values (e.g. test/{headline}).")
    tested = sorted(
        "test/" + key.removeprefix("val/")
        for key in base.model.logged_metric_names()
        if key.startswith("val/") and not key.endswith("_best")
    )
    if options.metric not in tested:
        raise ConfigError(f"--metric {options.metric!r} is never logged by this model's test; test metrics: {', '.join(tested)}.")
    mode = "min" if options.metric.endswith(LOWER_IS_BETTER) else "max"
    # what the study engine reads: the objective is a run's best validation value of the headline; no pruning; the
    # sampler only matters for a trial that finds the queue empty (another process took the queued ones)
    engine = argparse.Namespace(
        **vars(options), direction="minimize" if base.model.headline_key.endswith(LOWER_IS_BETTER) else "maximize", pruner="none", pruner_startup_trials=0,
        sampler="random", sampler_seed=None, space=options.variants,
    )  # fmt: skip
    engine.metric = options.validation_metric = base.model.headline_key
    space = [
        Parameter("variant", "categorical", choices=tuple(variants)),
        Parameter("seed", "categorical", choices=tuple(options.seed_list)),
    ]
    folder = Path(options.log_dir) / options.study
    created = not folder.exists()
    url = options.storage or embedded_url(folder)
    try:
        study = open_study(engine, url, space)
    except ConfigError:
        if created:
            report.remove_if_empty(folder)
        raise
    checks_seconds = time.perf_counter() - started
    run = ComparisonRun(
        engine,
        fit_args, space, folder, url, launcher, runs_several_processes(base), test_after_fit=True, variants=variants,
    )  # fmt: skip
    with report.quiet_lightning():
        optuna.storages.fail_stale_trials(study)  # runs of a process that died (missed heartbeats): failed, so run again
        queued = enqueue_missing(study, list(variants), options.seed_list)
        total = len(variants) * len(options.seed_list)
        print(
            f"mlplab compare: study {options.study!r} in {shown(url)}: {len(variants)} variants x {len(options.seed_list)} seeds = "
            f"{total} runs, {total - queued} done or running elsewhere, {queued} to run, {options.workers} at a time here; runs in "
            f"{folder}/VARIANT/seed_N.",
            flush=True,
        )
        if queued and not run.interrupted:
            study.optimize(run.objective, n_trials=queued, n_jobs=options.workers, callbacks=[run.stop_when_interrupted])
        report_started = time.perf_counter()
        done = write_comparison(study, list(variants), options, folder, mode)
        report_seconds = time.perf_counter() - report_started
    fits = sum(t.user_attrs.get("fit_seconds") or 0.0 for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    own = checks_seconds + report_seconds
    if fits:
        print(
            f"mlplab compare: the comparison's own work (checks {checks_seconds:.1f} s, statistics, aggregates and figure "
            f"{report_seconds:.1f} s) is {100 * own / fits:.1f} % of its runs' fit time ({fits:.1f} s).",
            flush=True,
        )
    if run.interrupted:
        print(f"mlplab compare: interrupted; {done}/{total} runs done. Run the same command again to run the rest.", flush=True)
        sys.exit(130)
    if done < total:
        print(f"mlplab: error: {total - done} of {total} runs did not complete; reasons in {folder / 'results.md'}.", file=sys.stderr)
        sys.exit(1)


def enqueue_missing(study: optuna.Study, variants: list[str], seeds: list[int]) -> int:
    """Queue every (variant, seed) without a completed, running or queued trial; the number now queued."""
    states = {TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING}
    taken = {pair(t) for t in study.get_trials(deepcopy=False) if t.state in states}
    for variant in variants:
        for seed in seeds:
            if (variant, seed) not in taken:
                study.enqueue_trial({"variant": variant, "seed": seed})
    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def check_variants_against_config(fit_args: list[str], variants: list[Variant], options: argparse.Namespace) -> MLPLabCLI:
    """ConfigError naming the file, the variant and the key for anything the config refuses; the base config's CLI."""
    try:
        base = report.resolved_config([*fit_args, *seed_arguments(options.seed_list[0])])
    except (MLPLabError, argparse.ArgumentError) as err:
        raise ConfigError(f"the config given to mlplab compare is refused before any run: {report.error_message(err)}") from err
    for variant in variants:
        try:
            report.resolved_config([*fit_args, *variant.fit_arguments(), *seed_arguments(options.seed_list[0])])
        except (MLPLabError, argparse.ArgumentError) as err:
            raise ConfigError(
                f"--variants {options.variants!r}, variant {variant.name!r} is refused by the config: {report.error_message(err)}"
            ) from err
    return base


class ComparisonRun(TuneRun):
    """A run of the comparison: the variant's changes and the seed as the trial's arguments, in ``VARIANT/seed_N``."""

    def __init__(self, *args: Any, variants: dict[str, Variant], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.variants = variants

    def run_name(self, trial: optuna.Trial, values: dict[str, Any]) -> str:
        return f"{values['variant']}/seed_{values['seed']}"

    def overrides(self, values: dict[str, Any]) -> list[str]:
        return [*self.variants[values["variant"]].fit_arguments(), *seed_arguments(int(values["seed"]))]

    def objective(self, trial: optuna.Trial) -> float:
        """The run's best validation value; a pair another trial completed or runs (a lower number) is not run again."""
        # (the queued trial's fixed values; TuneRun.objective asks for the same parameters again and gets the same values)
        this = (trial.suggest_categorical("variant", list(self.variants)), int(trial.suggest_categorical("seed", self.options.seed_list)))
        for other in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
            if other.number != trial.number and pair(other) == this and (other.state == TrialState.COMPLETE or other.number < trial.number):
                trial.set_user_attr("reason", f"not run: trial {other.number} runs or ran {this[0]} seed {this[1]}")
                return float("nan")
        run_dir = self.folder / self.run_name(trial, {"variant": this[0], "seed": this[1]})
        if run_dir.exists():  # a run that was cut off (Ctrl-C, SIGKILL, a crash): it starts again from scratch
            shutil.rmtree(run_dir)
        return super().objective(trial)
