"""A callback that marks when each phase of one ``mlplab fit`` ran, for ``benchmarks/tune_overhead.py``.

``tune_overhead.py --breakdown`` adds it to every trial (``--trainer.callbacks+=``, with this folder on
``PYTHONPATH``); it writes ``phases.json`` into the trial's run folder: wall-clock times (``time.time()``,
comparable with the tune process's and Optuna's) of the process start (read from ``/proc``), the built
config, the data set read, the fitted pre-processing, the sanity validation, the training loop, and the
seconds spent in validation and in checkpoint writes inside that loop. It observes only (hooks Lightning's
own step calls too), so the trial stays on the speed path, and it wraps two functions to time them: the
DataModule's ``setup`` and ``fit_preprocessor`` (so the data set's reading and the pre-processing's fit
are told apart), and the checkpoint writes.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

import mlplab.data.in_memory as in_memory


def process_start_time() -> float:
    """When this process was created (its fork), in ``time.time()`` seconds: ``/proc/self/stat`` field 22 is in clock ticks since boot."""
    ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    return time.time() - age


class TrialPhases(Callback):
    """Marks of one fit's phases (see the module's docstring), written to ``<log_dir>/phases.json`` at teardown."""

    def __init__(self) -> None:
        self.marks: dict[str, float] = {"process_start": process_start_time(), "config_built": time.time()}
        self.seconds = {"setup": 0.0, "preprocessing": 0.0, "validation": 0.0, "checkpoint_writes": 0.0}
        self.validation_started = 0.0
        in_memory.InMemoryDataModule.setup = self._timed("setup", in_memory.InMemoryDataModule.setup)
        in_memory.fit_preprocessor = self._timed("preprocessing", in_memory.fit_preprocessor)

    def _timed(self, name: str, function: Callable) -> Callable:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.time()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[name] += time.time() - start

        return wrapper

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            self.marks["data_ready"] = time.time()
            trainer.save_checkpoint = self._timed("checkpoint_writes", trainer.save_checkpoint)  # (what ModelCheckpoint calls)

    def on_sanity_check_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.marks["sanity_start"] = time.time()

    def on_sanity_check_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.marks["sanity_end"] = time.time()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.marks["train_start"] = time.time()

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.validation_started = time.time()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self.seconds["validation"] += time.time() - self.validation_started

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.marks["train_end"] = time.time()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.log_dir is not None:
            self.marks["fit_end"] = time.time()
            Path(trainer.log_dir, "phases.json").write_text(json.dumps({"marks": self.marks, "seconds": self.seconds}))
