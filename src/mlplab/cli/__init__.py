"""The ``mlplab`` command: ``fit | validate | test | predict`` (LightningCLI), ``data``, ``export`` and ``tune``.

- :mod:`mlplab.cli.lightning_cli`: :class:`MLPLabCLI`, the LightningCLI subclass (parsing, building, results);
- :mod:`mlplab.cli.defaults`: its default callback groups and keys;
- :mod:`mlplab.cli.run_logging`: where each command logs (its hooks), on the plain functions of
  :mod:`mlplab.cli.run_folders` (claiming ``version_N``, ``--ckpt_path last``, the run of a checkpoint);
- :mod:`mlplab.cli.config_sources`: config errors that name their file and key;
- :mod:`mlplab.cli.commands`: ``mlplab data`` and ``mlplab export``; ``mlplab tune`` is :mod:`mlplab.tune`;
- :mod:`mlplab.cli.messages`: bad input as one paragraph.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mlplab.errors import MLPLabError
from mlplab.lazy import lazy_exports
from mlplab.presets import presets_command, resolve_preset_arguments

if TYPE_CHECKING:
    from lightning.pytorch import Callback

    from mlplab.cli.commands import data_command, export_command
    from mlplab.cli.lightning_cli import MLPLabCLI
    from mlplab.cli.messages import describe_argument_error, describe_instantiation_error

__all__ = ["MLPLabCLI", "data_command", "describe_argument_error", "describe_instantiation_error", "export_command", "main"]
# imported on first use (mlplab.lazy): `mlplab tune` starts its trials' fork server before this process imports torch
__getattr__ = lazy_exports(
    __name__,
    {
        "MLPLabCLI": "mlplab.cli.lightning_cli",
        "data_command": "mlplab.cli.commands",
        "export_command": "mlplab.cli.commands",
        "describe_argument_error": "mlplab.cli.messages",
        "describe_instantiation_error": "mlplab.cli.messages",
    },
)


def main(args: Sequence[str] | None = None, extra_callbacks: Sequence[Callback] = ()) -> None:
    """Entry point of the ``mlplab`` console script (``extra_callbacks``: see :class:`MLPLabCLI`)."""
    try:
        argv = resolve_preset_arguments(sys.argv[1:] if args is None else args)
        if args is None:  # (LightningCLI, and Lightning's launchers starting the other ranks of a run, read sys.argv)
            sys.argv[1:] = argv
        if argv[:1] == ["presets"]:
            presets_command(argv[1:])
        elif argv[:1] == ["tune"]:
            from mlplab.tune.command import tune_command

            tune_command(argv[1:])
        elif argv[:1] == ["compare"]:
            from mlplab.tune.compare import compare_command

            compare_command(argv[1:])
        else:
            from mlplab.cli.commands import run_command

            run_command(argv, extra_callbacks, from_sys_argv=args is None)
    except (MLPLabError, argparse.ArgumentError) as err:
        if os.environ.get("MLPLAB_DEBUG"):
            traceback.print_exc()
        if isinstance(err, argparse.ArgumentError):
            from mlplab.cli.messages import describe_argument_error

            message = describe_argument_error(err)
        else:
            message = str(err)
        print(f"mlplab: error: {message}", file=sys.stderr)
        sys.exit(2)
