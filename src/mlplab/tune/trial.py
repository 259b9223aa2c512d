"""One trial of ``mlplab tune``: an ordinary ``mlplab fit`` process with the trial's pruning callback.

The tune process starts it (:mod:`mlplab.tune.launch`) forked from its warm server
(:func:`mlplab.tune.launch.run_forked_trial` calls :func:`run_trial`), or as
``python -m mlplab.tune.trial fit ARGS...`` with the trial's identity in the ``MLPLAB_TRIAL``
environment variable (JSON: storage URL, study, trial id, metric, direction, result file); with
``--trainer.devices=2`` Lightning re-runs that command for its second rank.

The process reports every validation value of the metric to Optuna through optuna-integration's
:class:`PyTorchLightningPruningCallback` (which raises ``optuna.TrialPruned`` when the pruner says
stop), and writes what the study needs — the best validation value, epochs, where it was pruned —
as a small JSON file the tune process reads when the trial ends.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import optuna
from lightning.pytorch import Callback, LightningModule, Trainer
from optuna_integration import PyTorchLightningPruningCallback

from mlplab.cli import main
from mlplab.data import spectrum_cache
from mlplab.data.idx import atomic_write_bytes
from mlplab.tune.launch import TRIAL_ENV
from mlplab.tune.storage import open_storage
from mlplab.tune.study import make_pruner


class TrialRecorder(Callback):
    """Keeps the best validation value of ``metric``, the fit's time and the test metrics; marks a pruned run in TensorBoard (``tune/pruned``)."""

    def __init__(self, metric: str, direction: str, result_file: Path) -> None:
        self.metric, self.maximize, self.result_file = metric, direction == "maximize", result_file
        self.best: float | None = None
        self.epochs, self.last_validated_epoch = 0, 0
        self.fit_started, self.fit_seconds = 0.0, None
        self.test: dict[str, float] | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # (setup, not on_fit_start: a callback overriding on_fit_start takes the fit off the speed path, mlplab.grouped)
        if stage == "fit":
            self.fit_started = time.perf_counter()

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.test = {key: float(value) for key, value in trainer.callback_metrics.items() if key.startswith("test/")}
        self.write(pruned_at=None)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or self.metric not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.metric])
        if not math.isnan(value) and (self.best is None or (value > self.best if self.maximize else value < self.best)):
            self.best = value
        self.epochs, self.last_validated_epoch = trainer.current_epoch + 1, trainer.current_epoch
        self.write(pruned_at=None)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if isinstance(exception, optuna.TrialPruned) and trainer.logger is not None:
            trainer.logger.log_metrics({"tune/pruned": 1.0}, step=trainer.global_step)
            trainer.logger.save()

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.epochs, self.fit_seconds = trainer.current_epoch, time.perf_counter() - self.fit_started
        if trainer.logger is not None:
            trainer.logger.log_metrics({"tune/pruned": 0.0}, step=trainer.global_step)
        self.write(pruned_at=None)

    def write(self, pruned_at: int | None) -> None:
        if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0:
            result = {
                "objective": self.best,
                "epochs": self.epochs,
                "pruned_at": pruned_at,
                "fit_seconds": self.fit_seconds,
                "test": self.test,
            }
            atomic_write_bytes(self.result_file, json.dumps(result).encode())


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the tune process that started it dies (nobody would record it).

    (A trial started from scratch; a forked trial watches the tune process instead: mlplab.tune.launch.)
    """
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return  # not Linux: the orphan trial finishes on its own
    if os.getppid() == 1:
        os.kill(os.getpid(), signal.SIGKILL)


def run_trial(argv: list[str], spec: dict[str, Any]) -> None:
    """``mlplab fit`` with ``argv``, reporting to the trial named in ``spec``."""
    spectrum_cache.use_folder(Path(spec["spectrum_cache"]))
    pruner = make_pruner(spec["pruner"], spec["pruner_startup_trials"])
    study = optuna.load_study(study_name=spec["study"], storage=open_storage(spec["storage"], prepared=True), pruner=pruner)
    # (Optuna documents the Trial constructor as not meant for direct use; it is how a second process acts on a
    # running trial, as optuna-integration's own distributed trials do: the tune process created and owns it)
    trial = optuna.trial.Trial(study, spec["trial_id"])
    recorder = TrialRecorder(spec["metric"], spec["direction"], Path(spec["result_file"]))
    pruning = PyTorchLightningPruningCallback(trial, monitor=spec["metric"])
    try:
        main(argv, extra_callbacks=[recorder, pruning])  # the recorder first: it sees the value the pruner stops on
        pruning.check_pruned()  # DDP: the ranks agreed to stop; this raises TrialPruned in the launching process
    except optuna.TrialPruned as pruned:
        recorder.write(pruned_at=recorder.last_validated_epoch)
        print(f"mlplab: trial {trial.number} pruned: {pruned}", flush=True)


if __name__ == "__main__":
    if os.environ.get("LOCAL_RANK", "0") == "0":
        _die_with_parent()
    run_trial(sys.argv[1:], json.loads(os.environ[TRIAL_ENV]))
