"""Where each ``mlplab`` command logs: the run-folder side of :class:`~mlplab.cli.MLPLabCLI`.

- ``fit`` claims its own ``logs/<name>/version_N`` before anything is built (so parallel fits never
  share one), and a refused fit removes what its claim created;
- ``--ckpt_path last`` resumes the newest ``last.ckpt`` of the config's runs and keeps logging there;
- ``validate`` / ``test`` of a fit's checkpoint log into that fit's run, at the step it reached;
- ``predict`` writes no TensorBoard run.

The folder logic itself is plain functions in :mod:`mlplab.cli.run_folders`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from mlplab.cli.run_folders import (
    claim_version,
    first_missing_folder,
    is_first_process,
    logger_root,
    newest_last_checkpoint,
    remove_empty_parents,
    training_run_of,
)
from mlplab.grouped import keep_logged_hyperparameters, set_logger_step


class RunLogging(LightningCLI):
    """LightningCLI hooks that choose this command's TensorBoard run (mixed into :class:`~mlplab.cli.MLPLabCLI`)."""

    claimed_log_dir: Path | None = None
    created_log_root: Path | None = None  # the outermost folder the claim created (logs/, logs/<name>/)
    resumed_version: int | None = None
    training_run: Path | None = None

    def _subcommand_config(self) -> Any:
        """The parsed config of the running subcommand (the whole config when LightningCLI runs none)."""
        return self.config.get(self.subcommand) if self.subcommand else self.config

    def _option(self, key: str, default: Any = None) -> Any:
        """The parsed value of ``key`` for the running subcommand."""
        return self._subcommand_config().get(key, default)

    def forget_refused_run(self) -> None:
        """After bad input was refused before training: remove the folder this run claimed (it holds nothing worth keeping)."""
        if self.claimed_log_dir is not None and not (self.claimed_log_dir / "checkpoints").exists():
            shutil.rmtree(self.claimed_log_dir, ignore_errors=True)
            remove_empty_parents(self.claimed_log_dir, self.created_log_root)

    def before_instantiate_classes(self) -> None:
        """Choose where this command logs.

        ``fit`` claims its own ``version_N`` folder (a resumed run continues in the folder it resumes);
        ``validate``/``test`` of a checkpoint written by a fit log into that fit's run, so TensorBoard
        shows their metrics beside its curves; ``predict`` writes no TensorBoard run at all (its output
        is the CSV).
        """
        config = self._subcommand_config()
        if self.subcommand == "fit" and self.resumed_version is None:
            self._claim_log_version(config)
        elif self.subcommand == "predict":
            config["trainer.logger"] = False
        elif self.subcommand in ("validate", "test"):
            self.training_run = self._log_into_training_run(config)

    def _log_into_training_run(self, config: Any) -> Path | None:
        """Point the logger at the run folder of ``ckpt_path`` (``<save_dir>/<name>/<version>/checkpoints/*.ckpt``), if it is one."""
        logger, ckpt = logger_root(config), config.get("ckpt_path")
        if logger is None or ckpt is None or "://" in str(ckpt) or (run := training_run_of(ckpt)) is None:
            return None
        init_args = logger[0]
        init_args.save_dir, init_args.name, init_args.version = str(run.parent.parent), run.parent.name, run.name
        # the fit's config.yaml and hparams stay as they are: this command's config is not saved over them
        self.save_config_callback = None
        return run

    def _continue_training_run_steps(self) -> None:
        """Log this validate/test at the step the checkpoint's fit reached, so its metrics sit at the end of the run's curves."""
        if self.training_run is None:
            return
        checkpoint = torch.load(self._option("ckpt_path"), map_location="cpu", weights_only=True)
        # where the fit's own test after fit logs: its optimizer steps
        set_logger_step(self.trainer, int(checkpoint.get("global_step", 0)))
        keep_logged_hyperparameters(self.model, self.datamodule)

    def before_validate(self) -> None:
        self._continue_training_run_steps()

    def before_test(self) -> None:
        self._continue_training_run_steps()

    def _resolve_last_checkpoint(self, config: Any) -> int | None:
        """``--ckpt_path last``: the newest ``last.ckpt`` of this config's earlier runs; the resumed run keeps logging there.

        (Lightning looks only in the new run's own, still empty, folder.) Returns the version resumed, if any.
        """
        logger = logger_root(config)
        if config.get("ckpt_path") != "last" or logger is None:
            return None
        init_args, root = logger
        found = newest_last_checkpoint(root)
        if found is None:
            rank_zero_info(f"mlplab: --ckpt_path last: no last.ckpt under {root}/version_*/checkpoints; starting from scratch.")
            config["ckpt_path"] = None
            return None
        newest, version = found
        if init_args.get("version") is None:
            init_args.version = version
            # the run continues in that folder; its config.yaml then records this (resuming) invocation
            self.save_config_kwargs = {**self.save_config_kwargs, "overwrite": True}
        config["ckpt_path"] = str(newest)
        rank_zero_info(f"mlplab: resuming from {newest}")
        return version

    def _claim_log_version(self, config: Any) -> None:
        """Create this run's ``version_N`` folder now (:func:`~mlplab.cli.run_folders.claim_version`).

        Only the process of global rank 0 claims: the ranks Lightning launches inherit LOCAL_RANK, and the other
        nodes of a multi-node run (NODE_RANK, or SLURM's and torchrun's variables) would each claim a folder of
        their own on a shared filesystem and leave it empty; their checkpoints go where rank 0's do.
        """
        logger = logger_root(config)
        if logger is None or logger[0].get("version") is not None or not is_first_process():
            return
        init_args, root = logger
        self.created_log_root = first_missing_folder(root)
        init_args.version = claim_version(root)
        self.claimed_log_dir = root / f"version_{init_args.version}"
