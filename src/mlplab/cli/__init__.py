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
import re
import signal
import sys
import traceback
from collections.abc import Sequence

from lightning.pytorch import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from mlplab.cli.commands import data_command, export_command
from mlplab.cli.lightning_cli import MLPLabCLI
from mlplab.cli.messages import describe_argument_error, describe_instantiation_error
from mlplab.errors import MLPLabError

__all__ = ["MLPLabCLI", "data_command", "describe_argument_error", "describe_instantiation_error", "export_command", "main"]


# how gloo and NCCL report a peer process that is gone
LOST_PEER = re.compile(r"Connection reset by peer|Connection closed by peer|Broken pipe|NCCL communicator was aborted")


def main(args: Sequence[str] | None = None, extra_callbacks: Sequence[Callback] = ()) -> None:
    """Entry point of the ``mlplab`` console script (``extra_callbacks``: see :class:`MLPLabCLI`)."""
    argv = list(sys.argv[1:] if args is None else args)
    try:
        if argv[:1] == ["data"]:
            data_command(argv[1:])
        elif argv[:1] == ["export"]:
            export_command(argv[1:])
        elif argv[:1] == ["tune"]:
            from mlplab.tune.command import tune_command  # (imports Optuna only when it is used)

            tune_command(argv[1:])
        else:
            MLPLabCLI(args=None if args is None else argv, extra_callbacks=extra_callbacks)
    except RuntimeError as err:
        lost_peer = LOST_PEER.search(str(err))
        if lost_peer is None:
            raise
        # torch.distributed's report when another process of the run died: a traceback from inside backward()
        print(
            f"mlplab: error: another process of this distributed run stopped ({lost_peer[0]}); this one cannot go on without it. "
            "Start every node again with --ckpt_path last: all of them resume from the run's last.ckpt.",
            file=sys.stderr,
        )
        sys.exit(1)
    except SIGTERMException:
        # Lightning's SIGTERMException is a SystemExit with status 0; a scheduler must see a job that did not finish
        sys.exit(128 + signal.SIGTERM)
    except (MLPLabError, argparse.ArgumentError) as err:
        if os.environ.get("MLPLAB_DEBUG"):
            traceback.print_exc()
        message = describe_argument_error(err) if isinstance(err, argparse.ArgumentError) else str(err)
        print(f"mlplab: error: {message}", file=sys.stderr)
        sys.exit(2)
