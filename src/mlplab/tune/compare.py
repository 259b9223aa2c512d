"""``mlplab compare``: its options, and the runs' fork server started before torch is imported (as ``mlplab tune`` does).

:mod:`mlplab.tune.comparison` runs the comparison, :mod:`mlplab.tune.comparison_report` writes its results.
Each run is an ordinary ``mlplab fit`` of the base config + the variant + ``--seed_everything=S
--data.seed=S``, tested on its best checkpoint, in ``logs/compare/STUDY/VARIANT/seed_S``. The runs
are trials of the study engine ``mlplab tune`` has (:class:`~mlplab.tune.search.TuneRun`, the warm
fork server, ``--workers``, the SQLite file or a shared ``--storage``, heartbeats), with the
variant and the seed as the trial's two parameters. A study's (variant, seed) pairs are run until
each has one completed trial: the same command after a Ctrl-C, a SIGKILL or a crash runs only the
pairs not done (a run that was cut off starts again from scratch), and a pair is never run twice.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from mlplab.errors import ConfigError
from mlplab.extras import require_extra
from mlplab.tune.launch import LAUNCHES, TrialLauncher


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlplab compare",
        description="Compare variants of a config over several seeds. Each run is an `mlplab fit` of the --config files and "
        "--key=value overrides given here, the variant's changes and the seed, tested on its best checkpoint.",
    )
    parser.add_argument(
        "--variants", required=True, help="YAML file: NAME: {key: value, config: [...]} per variant, or grid: {key: [...]}."
    )
    parser.add_argument("--seeds", default="3", help="N (seeds 1..N) or a comma-separated list of seeds, e.g. 1,2,7.")
    parser.add_argument("--study", required=True, help="Study name; the same name (and --storage) continues or joins a comparison.")
    parser.add_argument("--storage", default=None, help="SQLAlchemy URL shared by several machines (default: LOG_DIR/STUDY/study.db).")
    parser.add_argument("--workers", type=int, default=1, help="Runs at a time in this process, each its own process.")
    parser.add_argument("--metric", default=None, help="Test metric compared (default: the model's headline, test/acc or test/mse).")
    parser.add_argument(
        "--heartbeat", type=int, default=10, help="Seconds between a running run's heartbeats (3 missed: failed, run again)."
    )
    parser.add_argument("--log_dir", default="logs/compare", help="Runs go to LOG_DIR/STUDY/VARIANT/seed_N.")
    parser.add_argument("--launch", choices=LAUNCHES, default="warm", help="How run processes start (as in mlplab tune).")
    return parser


def parse_seeds(text: str) -> list[int]:
    """``N`` -> 1..N, or an explicit comma-separated list; ConfigError for anything else."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        values = []
    if len(values) == 1 and values[0] >= 1:
        return list(range(1, values[0] + 1))
    if len(values) > 1 and len(set(values)) == len(values) and min(values) >= 0:
        return values
    raise ConfigError(
        f"--seeds {text} is not allowed; give a number of seeds N >= 1 (seeds 1..N) or a list of distinct seeds >= 0, e.g. --seeds 1,2,7."
    )


def parse_options(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    options, fit_args = build_parser().parse_known_args(list(argv))
    options.seed_list = parse_seeds(options.seeds)
    for name in ("workers", "heartbeat"):
        if getattr(options, name) < 1:
            raise ConfigError(f"--{name}={getattr(options, name)} is not allowed; it must be a positive integer.")
    if fit_args[:1] and fit_args[0] in ("fit", "validate", "test", "predict"):
        raise ConfigError(f"mlplab compare runs `fit` itself; leave out {fit_args[0]!r}.")
    return options, fit_args


def compare_command(argv: Sequence[str]) -> None:
    require_extra("compare", "mlplab compare")
    options, fit_args = parse_options(argv)
    launcher = TrialLauncher.for_workers(options.launch, options.workers, fit_args)
    with launcher.ctrl_c.installed():
        # (imported here: torch, Lightning and Optuna load while the fork server imports them too)
        from mlplab.tune.comparison import run_comparison

        run_comparison(options, fit_args, launcher, time.perf_counter())
