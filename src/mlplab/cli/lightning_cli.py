"""``MLPLabCLI``: the LightningCLI of ``mlplab fit | validate | test | predict``.

Defaults a Lightning user expects, each a config group that can be tuned or switched off
(``--early_stopping=null``): ``checkpoint`` (ModelCheckpoint keeping the best ``val/acc``),
``last_checkpoint`` (``last.ckpt`` at every epoch end, for ``--ckpt_path last``),
``early_stopping`` (``val/loss``, patience 5), ``lr_monitor`` (LearningRateMonitor); a
TensorBoardLogger under ``logs/<name>/version_N``; ``seed_everything: 42``;
``model.steps_per_call: 64`` (see :class:`mlplab.LitMLP`). After ``fit`` the
best checkpoint is tested (``--test_after_fit=false`` to skip) and one line is printed::

    mlplab: test/acc=0.9876 test/loss=0.0412 ckpt=logs/mnist/version_0/checkpoints/...ckpt
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint, ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException

import mlplab.data
from mlplab.callbacks import CSVPredictionWriter, LayerGradientNorms, TestDiagnostics, TrainBatchImageGrid
from mlplab.checkpointing import AtomicCheckpointIO, GracefulInterrupt, check_checkpoint_file
from mlplab.cli.config_sources import check_config_files, explain
from mlplab.cli.messages import describe_instantiation_error
from mlplab.cli.run_folders import (
    claim_version,
    first_missing_folder,
    is_first_process,
    logger_root,
    newest_last_checkpoint,
    remove_empty_parents,
    training_run_of,
)
from mlplab.data.datamodules import InMemoryDataModule
from mlplab.errors import ConfigError, DataError, MLPLabError
from mlplab.grouped import set_logger_step
from mlplab.lit_mlp import LitMLP

OTHER_COMMANDS = (
    "Other commands: `mlplab data download --dataset {mnist,fashion_mnist,all}` fetches and verifies the data; "
    "`mlplab export --ckpt_path CKPT --format {state_dict,safetensors,torchscript,onnx}` exports a trained model; "
    "`mlplab tune --config ... --space SPACE.yaml --study NAME --n_trials N` searches hyper-parameters with Optuna."
)


# the fit config's own top-level keys (the callback groups below are the others)
TOP_LEVEL_KEYS = ("seed_everything", "trainer", "model", "data", "test_after_fit", "optimizer", "lr_scheduler", "ckpt_path", "weights_only")


def _class_default(cls: type, **init_args: Any) -> dict[str, Any]:
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}


OPTIONAL_CALLBACKS: dict[str, tuple[type[Callback], dict[str, Any]]] = {
    "checkpoint": (
        ModelCheckpoint,
        {"monitor": "val/acc", "mode": "max", "filename": "epoch{epoch:03d}-val_acc{val/acc:.4f}", "auto_insert_metric_name": False},
    ),
    # A second ModelCheckpoint for resuming: last.ckpt at every epoch end. (ModelCheckpoint's own save_last
    # rewrites last.ckpt only in epochs that also saved a top-k checkpoint, so after an epoch without
    # improvement it would hold an older state.)
    "last_checkpoint": (ModelCheckpoint, {"monitor": None, "save_top_k": 1, "filename": "last", "enable_version_counter": False}),
    # checked when validation ends, not at the epoch's end (the same moment when validation runs every epoch):
    # a fit stopped by max_steps before its first validation (fast_dev_run, smoke tests) then ends normally
    # instead of failing on a val/loss that was never logged
    "early_stopping": (EarlyStopping, {"monitor": "val/loss", "mode": "min", "patience": 5, "check_on_train_epoch_end": False}),
    "lr_monitor": (LearningRateMonitor, {"logging_interval": "step"}),
    "prediction_writer": (CSVPredictionWriter, {"output": "predictions.csv"}),  # acts only in `mlplab predict`
}
# off unless a config switches them on (`gradient_norms: {class_path: mlplab.callbacks.LayerGradientNorms}`)
OFF_BY_DEFAULT_CALLBACKS: dict[str, type[Callback]] = {"gradient_norms": LayerGradientNorms}


class MLPLabCLI(LightningCLI):
    """LightningCLI for :class:`mlplab.LitMLP` with any :class:`mlplab.data.InMemoryDataModule` subclass."""

    def __init__(
        self, args: Sequence[str] | None = None, run: bool = True, extra_callbacks: Sequence[Callback] = (), **kwargs: Any
    ) -> None:
        """``extra_callbacks`` join the defaults below (``mlplab tune`` adds its trial's pruning callback this way)."""
        kwargs.setdefault(
            "trainer_defaults",
            {
                "logger": _class_default(TensorBoardLogger, save_dir="logs", name="mlplab"),
                # counts every batch, redrawn every 64: a redraw costs about as much as a small MLP's step
                "callbacks": [
                    TrainBatchImageGrid(),
                    TestDiagnostics(),
                    TQDMProgressBar(refresh_rate=64),
                    GracefulInterrupt(),
                    *extra_callbacks,
                ],
            },
        )
        self.claimed_log_dir: Path | None = None
        self.created_log_root: Path | None = None  # the outermost folder the claim created (logs/, logs/<name>/)
        try:
            self._init_lightning_cli(args, run, kwargs)
        except (ConfigError, DataError, argparse.ArgumentError):
            # bad input is refused before training: the folder this run claimed holds nothing worth keeping
            if self.claimed_log_dir is not None and not (self.claimed_log_dir / "checkpoints").exists():
                shutil.rmtree(self.claimed_log_dir, ignore_errors=True)
                remove_empty_parents(self.claimed_log_dir, self.created_log_root)
            raise

    def _init_lightning_cli(self, args: Sequence[str] | None, run: bool, kwargs: dict[str, Any]) -> None:
        super().__init__(
            LitMLP,
            InMemoryDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=42,
            # errors raise ArgumentError instead of printing usage and exiting: main() reports them in one paragraph
            parser_kwargs={
                "description": "Train and evaluate MLPs on MNIST-like data. " + OTHER_COMMANDS,
                "exit_on_error": False,
                **{subcommand: {"exit_on_error": False} for subcommand in LightningCLI.subcommands()},
            },
            args=args,
            run=run,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # 64 batches per fetch from the train loader (see mlplab.grouped): identical training and logging,
        # a fraction of Lightning's per-batch cost (docs/speed.md).
        parser.set_defaults({"model": _class_default(LitMLP, steps_per_call=64)})
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.input_dim", "model.init_args.input_dim", apply_on="instantiate")
        for key, (callback_class, init_args) in OPTIONAL_CALLBACKS.items():
            parser.add_lightning_class_args(callback_class, key, subclass_mode=True, required=False)
            parser.set_defaults({key: _class_default(callback_class, **init_args)})
        for key, callback_class in OFF_BY_DEFAULT_CALLBACKS.items():
            parser.add_lightning_class_args(callback_class, key, subclass_mode=True, required=False)
        parser.add_argument(
            "--test_after_fit", type=bool, default=True, help="After fit, test the best checkpoint and print the `mlplab:` line."
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """LightningCLI's parsing, then: resolve ``--ckpt_path last`` and refuse unsafe or missing files.

        (This runs before LightningCLI reads the checkpoint's hparams.)
        """
        argv = list(sys.argv[1:] if args is None else args) if not isinstance(args, (dict, Namespace)) else []
        check_config_files(argv)
        try:
            super().parse_arguments(parser, args)
        except argparse.ArgumentError as err:
            if os.environ.get("MLPLAB_DEBUG"):
                raise
            top_level = [*TOP_LEVEL_KEYS, *OPTIONAL_CALLBACKS, *OFF_BY_DEFAULT_CALLBACKS]
            data_modules = sorted(
                name for name, value in vars(mlplab.data).items() if isinstance(value, type) and issubclass(value, InMemoryDataModule)
                and value is not InMemoryDataModule and name != "IDXDataModule"
            )  # fmt: skip
            raise explain(err, argv, top_level, data_modules) from err
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand) if subcommand else None
        self.resumed_version = None
        if config is not None:
            self.resumed_version = self._resolve_last_checkpoint(config)
            if config.get("ckpt_path") not in (None, "last", "best", "hpc"):
                check_checkpoint_file(config.get("ckpt_path"))
            if subcommand in ("validate", "test", "predict") and config.get("ckpt_path") is None:
                rank_zero_info(f"mlplab: no --ckpt_path: {subcommand} runs on a new model's untrained weights.")

    def _subcommand_config(self) -> Any:
        """The parsed config of the running subcommand (the whole config when LightningCLI runs none)."""
        return self.config.get(self.subcommand) if self.subcommand else self.config

    def _option(self, key: str, default: Any = None) -> Any:
        """The parsed value of ``key`` for the running subcommand."""
        return self._subcommand_config().get(key, default)

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
        if getattr(self, "training_run", None) is None:
            return
        checkpoint = torch.load(self._option("ckpt_path"), map_location="cpu", weights_only=True)
        # where the fit's own test after fit logs: its optimizer steps
        set_logger_step(self.trainer, int(checkpoint.get("global_step", 0)))
        for component in (self.model, self.datamodule):
            # (private LightningModule/DataModule flag; Lightning has no public switch after construction)
            component._log_hyperparams = False  # TensorBoard's hparams entry of the run keeps the fit's hp_metric

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

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except MLPLabError:
            raise  # the model's own one-paragraph errors (ConfigError is a ValueError too)
        except ValueError as err:
            # jsonargparse reports the model's or DataModule's own ConfigError inside a long "does not validate"
            # message: building the class directly raises the original one-paragraph error instead
            config = self._subcommand_config()
            for key in ("model", "data"):
                spec = config.get(key)
                if isinstance(spec, Namespace) and spec.get("class_path"):
                    module, _, name = spec.class_path.rpartition(".")
                    # (nested class options, such as the optimizer, stay at their defaults: they are not what failed here)
                    arguments = {k: v for k, v in vars(spec.get("init_args") or Namespace()).items() if not isinstance(v, Namespace)}
                    getattr(importlib.import_module(module), name)(**arguments)
            raise ConfigError(describe_instantiation_error(err)) from err

    def _preflight(self) -> None:
        """Errors a run would otherwise meet only after training started: monitored keys, task vs data."""
        self.model.check_data_fits(self.datamodule)
        self.model.check_monitored_metrics(self.trainer.callbacks)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        # (LightningCLI's protected hook between the parsed trainer config and the Trainer: the public
        # instantiate_trainer would have to repeat how LightningCLI gathers the callbacks)
        # optional callback groups set to null are left out; so is the default progress bar when it is switched off
        trainer_callbacks = [c for c in callbacks if c is not None]
        # switching the logger or checkpointing off leaves out the default callbacks that need them: Lightning
        # refuses a LearningRateMonitor without a logger and a ModelCheckpoint with enable_checkpointing=False
        if config.get("logger") is False:
            trainer_callbacks = [c for c in trainer_callbacks if not isinstance(c, LearningRateMonitor)]
            # no run folder to keep the resolved config in: LightningCLI would write config.yaml into the current
            # folder instead, and refuse (with a traceback) to overwrite it on the next run
            self.save_config_callback = None
        if config.get("enable_checkpointing") is False:
            trainer_callbacks = [c for c in trainer_callbacks if not isinstance(c, ModelCheckpoint)]
        # atomic checkpoint files unless the config brings its own CheckpointIO
        plugins = config.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            config["plugins"] = [*plugins, AtomicCheckpointIO()]
        if config.get("enable_progress_bar") is False:
            defaults = self.trainer_defaults.get("callbacks", [])
            self.trainer_defaults["callbacks"] = [c for c in defaults if not isinstance(c, ProgressBar)]
        try:
            return super()._instantiate_trainer(config, trainer_callbacks)
        except (MisconfigurationException, ModuleNotFoundError) as err:
            # Lightning refuses hardware options this machine cannot run (accelerator=gpu without a GPU, tpu without
            # torch_xla, ...) with a traceback that names neither the option nor the machine
            chosen = ", ".join(f"trainer.{key}={config.get(key)!r}" for key in ("accelerator", "devices", "strategy", "precision"))
            gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
            raise ConfigError(
                f"Lightning's Trainer cannot run {chosen} here: {err} This machine has {gpus} CUDA GPU(s) and "
                f"{os.cpu_count()} CPU core(s); trainer.accelerator=cpu (or auto) runs anywhere."
            ) from err

    def before_fit(self) -> None:
        self._preflight()
        self.fit_started = time.perf_counter()

    def after_fit(self) -> None:
        rank_zero_info(
            f"mlplab: fit took {time.perf_counter() - self.fit_started:.1f} s "
            f"({self.trainer.current_epoch} epochs, {self.trainer.global_step} optimizer steps)"
        )
        if not self._option("test_after_fit", True):
            return
        callback = self.trainer.checkpoint_callback
        best = callback.best_model_path if callback is not None else ""
        # The hparams (and TensorBoard's placeholder hp_metric=-1) were logged when fit started; logging them
        # again for this test stage, into the same run, would overwrite the run's hp_metric.
        for component in (self.model, self.datamodule):
            if component is not None:
                component._log_hyperparams = False
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None, verbose=False)
        self._print_result(best or "none (current weights)")

    def after_test(self) -> None:
        self._print_result(self._option("ckpt_path") or "none (current weights)")

    def _print_result(self, ckpt: str) -> None:
        if self.trainer.global_rank != 0:
            return
        metrics = self.trainer.callback_metrics
        keys = [k for k in ("test/acc", "test/loss") if k in metrics] + sorted(
            k for k in metrics if k.startswith("test/") and k not in ("test/acc", "test/loss")
        )
        values = " ".join(f"{key}={float(metrics[key]):.4f}" for key in keys)
        print(f"mlplab: {values} ckpt={ckpt}", flush=True)
