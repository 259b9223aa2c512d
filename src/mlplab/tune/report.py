"""What ``mlplab tune`` checks before the first trial and writes after the last.

Before: every value of the space is given to the real config parser and model (an unknown key,
a value of the wrong type, a value the model refuses), so a bad space is one error, not N failed
trials. After: ``trials.csv`` and ``trials.md`` (one row per trial), ``best.yaml`` (the base
configs with the best trial's values resolved into one file: ``mlplab fit --config best.yaml``
trains it again) and the last line for scripts.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import logging
import math
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from mlplab.cli.lightning_cli import MLPLabCLI
from mlplab.cli.messages import describe_argument_error
from mlplab.data.idx import atomic_write_bytes
from mlplab.errors import ConfigError, MLPLabError
from mlplab.tune.space import Parameter, as_override, decode_choice

QUIET_LOGGERS = ("lightning.pytorch", "lightning.fabric")


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's start-up info lines (seed, GPU available, ...) would repeat once per checked value."""
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            # LightningCLI warns that `args` and sys.argv (`mlplab tune ...`) both exist: args is what it parses here
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def resolved_config(args: Sequence[str]) -> MLPLabCLI:
    """The CLI built (model, data module, trainer; nothing run) from ``args``; errors as MLPLab/Argument errors."""
    with quiet_lightning():
        return MLPLabCLI(args=list(args), run=False)


def check_space_against_config(fit_args: Sequence[str], space: Sequence[Parameter], source: str, metric: str) -> MLPLabCLI:
    """ConfigError naming the key and value for anything the config or model refuses; the base config's CLI.

    The values are checked together (the i-th value of every parameter in one build: as many builds as the longest
    list of values); only a combination that is refused is checked value by value, to name the one refused.
    """
    try:
        base = resolved_config(fit_args)
    except (MLPLabError, argparse.ArgumentError) as err:
        raise ConfigError(f"the config given to mlplab tune is refused before any trial: {error_message(err)}") from err
    logged = base.model.logged_metric_names()
    if metric not in logged:
        choices = ", ".join(sorted(k for k in logged if k.startswith("val/")))
        raise ConfigError(f"--metric {metric!r} is never logged by this model; validation metrics: {choices}.")
    values = [(parameter.key, parameter.values_to_check()) for parameter in space]
    for index in range(max((len(v) for _, v in values), default=0)):
        together = [(key, checked[min(index, len(checked) - 1)]) for key, checked in values]
        try:
            resolved_config([*fit_args, *(as_override(key, value) for key, value in together)])
        except (MLPLabError, argparse.ArgumentError) as combined:
            for key, value in together:
                try:
                    resolved_config([*fit_args, as_override(key, value)])
                except (MLPLabError, argparse.ArgumentError) as err:
                    raise ConfigError(f"{source}: {key}={value!r} is refused by the config: {error_message(err)}") from err
            shown_values = ", ".join(f"{key}={value!r}" for key, value in together)
            raise ConfigError(
                f"{source}: the values {shown_values} are refused together by the config: {error_message(combined)}"
            ) from combined
    return base


def error_message(err: Exception) -> str:
    return describe_argument_error(err) if isinstance(err, argparse.ArgumentError) else str(err)


def grid_size(grid: dict[str, list[Any]]) -> int:
    return math.prod(len(values) for values in grid.values())


def remove_if_empty(folder: Path) -> None:
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def trial_row(trial: FrozenTrial, space: Sequence[Parameter], metric: str) -> dict[str, str]:
    attrs = trial.user_attrs
    row = {"number": str(trial.number), "state": trial.state.name.lower(), metric: "" if trial.value is None else f"{trial.value:.4f}"}
    for parameter in space:
        value = trial.params.get(parameter.key)
        row[parameter.key] = "" if value is None else str(decode_choice(value))
    row["epochs"] = "" if attrs.get("epochs") is None else str(attrs["epochs"])
    row["pruned_at_epoch"] = str(attrs.get("pruned_at", "")) if trial.state == TrialState.PRUNED else ""
    row["seconds"] = f"{trial.duration.total_seconds():.1f}" if trial.duration else ""
    row["host"], row["process"] = str(attrs.get("host", "")), str(attrs.get("process", ""))
    row["run"] = str(attrs.get("run", ""))
    row["reason"] = str(attrs.get("reason", "")) if trial.state == TrialState.FAIL else ""
    return row


def write_tables(rows: list[dict[str, str]], folder: Path) -> tuple[Path, Path]:
    """``trials.csv`` and the same table as ``trials.md``; both written atomically."""
    columns = list(rows[0]) if rows else ["number", "state"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    csv_path, md_path = folder / "trials.csv", folder / "trials.md"
    atomic_write_bytes(csv_path, buffer.getvalue().encode())
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row[c].replace("|", "\\|") for c in columns) + " |" for row in rows]
    atomic_write_bytes(md_path, ("\n".join(lines) + "\n").encode())
    return csv_path, md_path


def write_best_config(best: FrozenTrial, study_name: str, space: Sequence[Parameter], fit_args: Sequence[str], folder: Path) -> Path:
    """``best.yaml``: the base configs with the best trial's values, resolved by the same parser ``mlplab fit`` uses."""
    overrides = [as_override(p.key, decode_choice(best.params[p.key])) for p in space if p.key in best.params]
    cli = resolved_config([*fit_args, *overrides])
    header = f"# mlplab tune: trial {best.number} of study {study_name!r}, objective {best.value:.6g}\n"
    path = folder / "best.yaml"
    atomic_write_bytes(path, (header + cli.parser.dump(cli.config, skip_none=False)).encode())
    return path


def finish(
    study: optuna.Study,
    space: Sequence[Parameter],
    folder: Path,
    fit_args: Sequence[str],
    base: MLPLabCLI,
    options: argparse.Namespace,
    interrupted: bool,
) -> None:
    """Write the tables and best.yaml, print the result line; exit 130 after Ctrl-C, 1 if no trial completed."""
    trials = study.get_trials(deepcopy=False)
    folder.mkdir(parents=True, exist_ok=True)
    csv_path, _ = write_tables([trial_row(t, space, options.metric) for t in trials], folder)
    finished = [t for t in trials if t.state.is_finished()]
    counts = ", ".join(
        f"{sum(t.state == s for t in finished)} {s.name.lower()}" for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    )
    if options.metric != base.model.headline_key:
        print(
            f"mlplab tune: TensorBoard's hp_metric is the best {base.model.headline_key}; the objective {options.metric} is in {csv_path}."
        )
    if interrupted:
        print(
            f"mlplab tune: interrupted; the study keeps its {len(finished)} finished trials ({counts}). Run the same command "
            f"again to continue it (--study {options.study}{'' if options.storage is None else ' --storage URL'}).",
            flush=True,
        )
    if not any(t.state == TrialState.COMPLETE for t in trials):
        print(f"mlplab: error: no trial of study {options.study!r} completed ({counts}); reasons in {csv_path}.", file=sys.stderr)
        sys.exit(130 if interrupted else 1)
    best = study.best_trial
    best_path = write_best_config(best, study.study_name, space, fit_args, folder)
    print(
        f"mlplab: best {options.metric}={best.value:.4f} trial={best.number} trials={len(finished)} table={csv_path} best_config={best_path}",
        flush=True,
    )
    if interrupted:
        sys.exit(130)
