"""``mlplab tune``: an Optuna study whose trials are ordinary ``mlplab fit`` runs.

Optuna does the searching (its samplers and pruners), the bookkeeping (its storage: the embedded
SQLite file, or a shared database that processes on several machines join) and the running of
several trials at once (``study.optimize(n_jobs=K)``: K threads, each waiting on its own trial
process). This module parses the options and starts the trials' fork server
(:mod:`~mlplab.tune.launch`) before anything imports torch and Lightning here, so that the server's
imports run on one core while this process's run on the other; :mod:`~mlplab.tune.search` does the rest.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from mlplab.errors import ConfigError
from mlplab.extras import require_extra
from mlplab.tune.launch import LAUNCHES, TrialLauncher


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlplab tune",
        description="Search hyper-parameters with Optuna. Each trial is an `mlplab fit` of the --config files and "
        "--key=value overrides given here, with the trial's values from --space on top.",
    )
    parser.add_argument("--space", required=True, help="YAML file: dotted config key -> {type: float|int|categorical, ...}.")
    parser.add_argument("--study", required=True, help="Study name; the same name (and --storage) joins an existing study.")
    parser.add_argument("--storage", default=None, help="SQLAlchemy URL shared by several machines (default: LOG_DIR/STUDY/study.db).")
    parser.add_argument("--n_trials", type=int, default=None, help="Trials the study holds when done (default for grid: the grid's size).")
    parser.add_argument("--workers", type=int, default=1, help="Trials run at a time by this process, each its own process.")
    parser.add_argument("--sampler", choices=("tpe", "random", "grid"), default="tpe")
    parser.add_argument("--sampler_seed", type=int, default=None, help="Seed of the sampler (leave unset when several processes join).")
    parser.add_argument("--pruner", choices=("median", "hyperband", "none"), default="median")
    parser.add_argument("--pruner_startup_trials", type=int, default=5, help="median: trials that are never pruned, to learn from.")
    parser.add_argument("--metric", default="val/acc", help="Validation metric; a trial's objective is its best value.")
    parser.add_argument("--direction", choices=("maximize", "minimize"), default=None, help="Default: minimize for losses, else maximize.")
    parser.add_argument("--timeout", type=float, default=None, help="Seconds after which this process starts no new trial.")
    parser.add_argument("--heartbeat", type=int, default=10, help="Seconds between a running trial's heartbeats (3 missed: failed).")
    parser.add_argument("--log_dir", default="logs/tune", help="Trials' TensorBoard runs go to LOG_DIR/STUDY/trial_NNNN.")
    parser.add_argument(
        "--launch", choices=LAUNCHES, default="warm",
        help="How trial processes start: forked from a process that imported torch and Lightning once (warm), or from scratch.",
    )  # fmt: skip
    return parser


def parse_options(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """The tune options and the arguments passed on to every trial's ``mlplab fit``; ConfigError for bad values."""
    options, fit_args = build_parser().parse_known_args(list(argv))
    options.direction = options.direction or ("minimize" if "loss" in options.metric or "mse" in options.metric else "maximize")
    if not options.metric.startswith("val/"):
        raise ConfigError(f"--metric {options.metric!r} is not a validation metric; the objective is a val/ key (a test metric never is).")
    for name in ("n_trials", "workers", "heartbeat"):
        value = getattr(options, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name}={value} is not allowed; it must be a positive integer.")
    if any(arg in ("fit", "validate", "test", "predict") for arg in fit_args[:1]):
        raise ConfigError(f"mlplab tune runs `fit` itself; leave out {fit_args[0]!r}.")
    return options, fit_args


def tune_command(argv: Sequence[str]) -> None:
    require_extra("tune", "mlplab tune")
    options, fit_args = parse_options(argv)
    launcher = TrialLauncher.for_workers(options.launch, options.workers, fit_args)
    with launcher.ctrl_c.installed():  # from here on Ctrl-C is a flag the study reads (mlplab.tune.launch.CtrlC)
        from mlplab.tune.search import run_search  # (torch, Lightning, Optuna: imported while the fork server imports them too)

        run_search(options, fit_args, launcher)
