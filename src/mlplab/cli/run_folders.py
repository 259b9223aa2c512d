"""Where a command's TensorBoard run lives: claiming ``version_N``, finding ``last.ckpt``, the run of a checkpoint.

Plain functions over folders, so they are tested without a Trainer (``tests/test_run_folders.py``).
Lightning's loggers pick ``max(existing) + 1`` only when they first write, and ``--ckpt_path last``
looks only in the new run's own, still empty, folder; these fill both gaps.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from jsonargparse import Namespace

VERSIONED_LOGGERS = ("lightning.pytorch.loggers.TensorBoardLogger", "lightning.pytorch.loggers.CSVLogger")
VERSION_FOLDER = re.compile(r"version_(\d+)")


def logger_root(config: Any) -> tuple[Any, Path] | None:
    """The TensorBoard/CSV logger's init_args in a parsed config and the folder holding its ``version_N`` folders, if there is one."""
    logger = config.get("trainer.logger") if "trainer.logger" in config else None
    if not isinstance(logger, Namespace) or logger.get("class_path") not in VERSIONED_LOGGERS:
        return None
    init_args = logger.init_args
    return init_args, Path(init_args.save_dir) / (init_args.get("name") or "")


# set by Lightning's launchers (LOCAL_RANK, NODE_RANK), torchrun (RANK, GROUP_RANK) and SLURM (SLURM_PROCID)
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")


def is_first_process(environ: Any = None) -> bool:
    """Whether this process is global rank 0 of its run (or the only process), judged from the launchers' variables."""
    environ = os.environ if environ is None else environ
    return all(environ.get(name, "0") == "0" for name in RANK_VARIABLES)


def claim_version(root: Path) -> int:
    """Create the next free ``root/version_N`` atomically (``mkdir`` fails if another run took it) and return N.

    Two runs started together would otherwise both take the same folder and overwrite each other's checkpoints.
    """
    root.mkdir(parents=True, exist_ok=True)
    taken = [int(m.group(1)) for p in root.iterdir() if (m := VERSION_FOLDER.fullmatch(p.name))]
    version = max(taken, default=-1) + 1
    while True:
        try:
            (root / f"version_{version}").mkdir()
            return version
        except FileExistsError:
            version += 1


def first_missing_folder(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (what creating ``path`` would create), if any."""
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


def remove_empty_parents(folder: Path, up_to: Path | None) -> None:
    """Remove ``folder``'s parent folders up to and including ``up_to`` while they are empty (a refused run's leftovers)."""
    if up_to is None:
        return
    current = folder.parent
    while True:
        try:
            current.rmdir()  # only an empty folder goes
        except OSError:
            return
        if current == up_to:
            return
        current = current.parent


def newest_last_checkpoint(root: Path) -> tuple[Path, int] | None:
    """The most recently written ``root/version_N/checkpoints/last*.ckpt`` and its N, if any run has one."""
    candidates = [p for p in root.glob("version_*/checkpoints/last*.ckpt") if VERSION_FOLDER.fullmatch(p.parent.parent.name)]
    if not candidates:
        return None
    newest = max(candidates, key=lambda p: p.stat().st_mtime)
    return newest, int(newest.parent.parent.name.removeprefix("version_"))


def training_run_of(checkpoint: str | Path) -> Path | None:
    """The run folder that wrote ``checkpoint`` (``<run>/checkpoints/x.ckpt`` beside the run's ``hparams.yaml``), if it is one."""
    path = Path(checkpoint).resolve()
    run = path.parent.parent
    if path.parent.name != "checkpoints" or not (run / "hparams.yaml").is_file():
        return None
    return run
