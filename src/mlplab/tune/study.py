"""The Optuna study of ``mlplab tune``: sampler, pruner, creating or joining it, and what counts towards ``--n_trials``.

Used by the tune process and by each trial process (Optuna keeps the pruner with the ``Study`` object, not in
the storage, so a trial process builds the same one to report to).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import optuna
from optuna.trial import TrialState

from mlplab.errors import ConfigError
from mlplab.tune.space import Parameter, grid_space
from mlplab.tune.storage import open_storage, shown

# what counts towards --n_trials: every trial that ran or runs (a trial lost with its process is marked failed)
COUNTED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)


def make_pruner(name: str, startup_trials: int) -> optuna.pruners.BasePruner:
    """The study's pruner, built the same way in the tune process and in every trial process."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


def make_sampler(options: argparse.Namespace, space: Sequence[Parameter]) -> optuna.samplers.BaseSampler:
    if options.sampler == "grid":
        return optuna.samplers.GridSampler(grid_space(space, options.space), seed=options.sampler_seed)
    if options.sampler == "random":
        return optuna.samplers.RandomSampler(seed=options.sampler_seed)
    return optuna.samplers.TPESampler(seed=options.sampler_seed)


def open_study(options: argparse.Namespace, url: str, space: Sequence[Parameter]) -> optuna.Study:
    """Create the study or join it; ConfigError when an existing study optimizes the other way."""
    storage = open_storage(url, heartbeat_interval=options.heartbeat)
    try:
        existing = optuna.load_study(study_name=options.study, storage=storage)
    except KeyError:
        existing = None
    if existing is not None and existing.direction.name.lower() != options.direction:
        raise ConfigError(
            f"study {options.study!r} in {shown(url)} {existing.direction.name.lower()}s, but --direction {options.direction} was "
            "given; use the study's direction or another --study name."
        )
    return optuna.create_study(
        study_name=options.study, storage=storage, direction=options.direction, load_if_exists=True,
        sampler=make_sampler(options, space), pruner=make_pruner(options.pruner, options.pruner_startup_trials),
    )  # fmt: skip


def counted_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=COUNTED_STATES))
