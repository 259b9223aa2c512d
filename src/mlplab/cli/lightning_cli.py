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
import sys
import time
from collections.abc import Sequence
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from mlplab import model_config
from mlplab.callbacks import TestDiagnostics, TrainBatchImageGrid
from mlplab.checkpointing import AtomicCheckpointIO, GracefulInterrupt, check_checkpoint_file
from mlplab.cli.config_sources import check_config_files, describe_trainer_error, explain
from mlplab.cli.defaults import OFF_BY_DEFAULT_CALLBACKS, OPTIONAL_CALLBACKS, OTHER_COMMANDS, class_default, config_keys, data_module_names
from mlplab.cli.messages import describe_instantiation_error
from mlplab.cli.run_logging import RunLogging
from mlplab.data.in_memory import InMemoryDataModule
from mlplab.errors import ConfigError, DataError, MLPLabError
from mlplab.grouped import keep_logged_hyperparameters
from mlplab.lit_mlp import LitMLP


class MLPLabCLI(RunLogging):
    """LightningCLI for :class:`mlplab.LitMLP` with any :class:`mlplab.data.InMemoryDataModule` subclass."""

    def __init__(
        self, args: Sequence[str] | None = None, run: bool = True, extra_callbacks: Sequence[Callback] = (), **kwargs: Any
    ) -> None:
        """``extra_callbacks`` join the defaults below (``mlplab tune`` adds its trial's pruning callback this way)."""
        kwargs.setdefault(
            "trainer_defaults",
            {
                "logger": class_default(TensorBoardLogger, save_dir="logs", name="mlplab"),
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
        try:
            self._init_lightning_cli(args, run, kwargs)
        except (ConfigError, DataError, argparse.ArgumentError):
            self.forget_refused_run()
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
        parser.set_defaults({"model": class_default(LitMLP, steps_per_call=64)})
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.input_dim", "model.init_args.input_dim", apply_on="instantiate")
        for key, (callback_class, init_args) in OPTIONAL_CALLBACKS.items():
            parser.add_lightning_class_args(callback_class, key, subclass_mode=True, required=False)
            parser.set_defaults({key: class_default(callback_class, **init_args)})
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
        self.argv = argv
        check_config_files(argv)
        try:
            super().parse_arguments(parser, args)
        except argparse.ArgumentError as err:
            if os.environ.get("MLPLAB_DEBUG"):
                raise
            raise explain(err, argv, config_keys(), data_module_names()) from err
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand) if subcommand else None
        self.resumed_version = None
        if config is not None:
            self.resumed_version = self._resolve_last_checkpoint(config)
            if config.get("ckpt_path") not in (None, "last", "best", "hpc"):
                check_checkpoint_file(config.get("ckpt_path"))
            if subcommand in ("validate", "test", "predict") and config.get("ckpt_path") is None:
                rank_zero_info(f"mlplab: no --ckpt_path: {subcommand} runs on a new model's untrained weights.")

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
        model_config.check_data_fits(self.model.task, self.datamodule)
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
        except MLPLabError:
            raise
        except (MisconfigurationException, ModuleNotFoundError, ValueError) as err:
            # Lightning refuses a bad Trainer argument (`max_epochs` must be ...) or hardware options this machine
            # cannot run (accelerator=gpu without a GPU, tpu without torch_xla, ...) with a traceback
            raise describe_trainer_error(err, config, self.argv) from err

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
        if any(getattr(callback, "ended_the_fit", False) for callback in self.trainer.callbacks):
            return  # (configs/lr_find.yaml: the learning-rate finder searched, nothing was trained)
        callback = self.trainer.checkpoint_callback
        best = callback.best_model_path if callback is not None else ""
        keep_logged_hyperparameters(self.model, self.datamodule)  # (logged when fit started)
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
