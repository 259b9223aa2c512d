"""Imported by the fork server of ``mlplab tune`` (its preload list): one build of the study's config and one read of its data, done once.

A trial forked from the server inherits its memory. Building the base config there first (parsing it,
instantiating model, data module and Trainer, without running anything) leaves in that memory what a
process computes on its first build and caches (jsonargparse's parsed signatures and docstrings,
Lightning's first-use set-up), so each trial's own build costs what a second build costs (about 0.2 s
less per trial on two cores). The data module's IDX files are then checked and decoded
(:func:`mlplab.data.idx.keep_decoded_files`: plain reads and numpy, no torch operation, so no torch
thread pool exists in the server before it forks), and every trial finds them in memory. The tune
process passes the arguments in ``MLPLAB_TUNE_WARM_UP`` (JSON); nothing is written, and a warm-up that
fails only costs that time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os

from mlplab.tune.launch import WARM_UP_ENV


def warm_up(fit_args: list[str]) -> None:
    """Build (not run) the ``mlplab fit`` configuration of ``fit_args``, quietly; any error is ignored."""
    from mlplab.cli import MLPLabCLI
    from mlplab.data import IDXDataModule, read_idx
    from mlplab.data.idx import keep_decoded_files

    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.suppress(Exception, SystemExit), open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            cli = MLPLabCLI(args=fit_args, run=False)
            if isinstance(cli.datamodule, IDXDataModule):
                keep_decoded_files()
                for path in cli.datamodule.verified_files():  # (the MD5s are kept too: mlplab.data.sources.md5_of)
                    read_idx(path)
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


if WARM_UP_ENV in os.environ:
    warm_up(json.loads(os.environ.pop(WARM_UP_ENV)))  # (popped: the forked trials do not see it)
