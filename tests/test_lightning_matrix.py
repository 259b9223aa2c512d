"""Lightning's features at ``steps_per_call=4`` and ``1``: the same training, or Lightning's own step with the info line.

One row of :data:`ROWS` per feature (every callback of ``lightning.pytorch.callbacks`` that applies to a
one-device fit, the offline loggers, precisions, profilers, Trainer flags, mlplab's own callbacks). Each
row fits the same seeded model twice on tiny data, and checks that both runs end with bit-identical
weights and the same ``global_step``, that a per-batch callback saw the same batches and the same
``outputs["loss"]``, and that the CSV logger wrote the same values at the same steps. ``path`` says which
loop the row must take at ``steps_per_call=4``: ``speed`` (grouped) or ``lightning`` (one info line, then
Lightning's own step). A new Lightning callback fails :func:`test_every_lightning_callback_has_a_row`
until it gets a row here. docs/reuse.md shows the same table.
"""

from __future__ import annotations

import csv
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch.callbacks as lightning_callbacks
import pytest
import torch
from lightning.pytorch import Callback, seed_everything
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.tuner import Tuner

from mlplab import CSVPredictionWriter, FusedEMAWeightAveraging, LayerGradientNorms, LitMLP, TestDiagnostics, TrainBatchImageGrid
from mlplab.checkpointing import GracefulInterrupt
from mlplab.dashboard import CustomScalarsLayout
from tests.conftest import quiet_trainer

SPEED, LIGHTNING = "speed", "lightning"
FALLBACK_LINE = "mlplab: Lightning's own step per batch (model.steps_per_call=4 not used)"


@dataclass
class Row:
    """A Lightning feature: Trainer arguments (made fresh per run), the loop it takes, what else to compare."""

    trainer: Callable[[Any], dict[str, Any]] = lambda tmp: {}
    path: str = SPEED
    tuner: str | None = None  # "lr_find" or "scale_batch_size": run the tuner instead of a plain fit
    model: dict[str, Any] = field(default_factory=dict)


def callbacks(*make: Callable[[], Callback]) -> Callable[[Any], dict[str, Any]]:
    return lambda tmp: {"callbacks": [m() for m in make]}


ROWS: dict[str, Row] = {
    # ------------------------------------------------------------------ lightning.pytorch.callbacks
    "BatchSizeFinder": Row(callbacks(lambda: lightning_callbacks.BatchSizeFinder(max_trials=2, steps_per_trial=2))),
    "DeviceStatsMonitor": Row(callbacks(lightning_callbacks.DeviceStatsMonitor)),
    "EarlyStopping": Row(callbacks(lambda: lightning_callbacks.EarlyStopping("train/loss", patience=0, check_on_train_epoch_end=True))),
    "EMAWeightAveraging": Row(callbacks(lambda: lightning_callbacks.EMAWeightAveraging(decay=0.9))),
    "GradientAccumulationScheduler": Row(callbacks(lambda: lightning_callbacks.GradientAccumulationScheduler({1: 2})), LIGHTNING),
    "LambdaCallback": Row(callbacks(lambda: lightning_callbacks.LambdaCallback(on_train_epoch_end=lambda trainer, module: None))),
    "LambdaCallback(on_before_backward)": Row(
        callbacks(lambda: lightning_callbacks.LambdaCallback(on_before_backward=lambda trainer, module, loss: None)), LIGHTNING
    ),
    "LearningRateFinder": Row(callbacks(lambda: lightning_callbacks.LearningRateFinder(num_training_steps=10)), LIGHTNING),
    "LearningRateMonitor": Row(callbacks(lambda: lightning_callbacks.LearningRateMonitor(logging_interval="step"))),
    "ModelCheckpoint": Row(lambda tmp: {"callbacks": [lightning_callbacks.ModelCheckpoint(tmp, every_n_train_steps=3, save_top_k=-1)]}),
    "ModelPruning": Row(callbacks(lambda: lightning_callbacks.ModelPruning("l1_unstructured", amount=0.2))),
    "ModelSummary": Row(callbacks(lambda: lightning_callbacks.ModelSummary(max_depth=2))),
    "OnExceptionCheckpoint": Row(lambda tmp: {"callbacks": [lightning_callbacks.OnExceptionCheckpoint(tmp)]}),
    "RichModelSummary": Row(callbacks(lightning_callbacks.RichModelSummary)),
    "RichProgressBar": Row(lambda tmp: {"callbacks": [lightning_callbacks.RichProgressBar()], "enable_progress_bar": True}),
    "SpikeDetection": Row(callbacks(lambda: lightning_callbacks.SpikeDetection(rtol=100.0))),
    "StochasticWeightAveraging": Row(callbacks(lambda: lightning_callbacks.StochasticWeightAveraging(swa_lrs=1e-2, swa_epoch_start=1))),
    "ThroughputMonitor": Row(callbacks(lambda: lightning_callbacks.ThroughputMonitor(batch_size_fn=lambda batch: len(batch[1])))),
    "Timer": Row(callbacks(lambda: lightning_callbacks.Timer(duration="00:01:00:00"))),
    "TQDMProgressBar": Row(lambda tmp: {"callbacks": [lightning_callbacks.TQDMProgressBar(refresh_rate=2)], "enable_progress_bar": True}),
    # ------------------------------------------------------------------ mlplab's own callbacks
    "mlplab FusedEMAWeightAveraging": Row(callbacks(lambda: FusedEMAWeightAveraging(decay=0.9))),
    "mlplab LayerGradientNorms": Row(callbacks(lambda: LayerGradientNorms(every_n_steps=2))),
    "mlplab TrainBatchImageGrid": Row(callbacks(TrainBatchImageGrid)),
    "mlplab GracefulInterrupt": Row(callbacks(GracefulInterrupt)),
    "mlplab TestDiagnostics": Row(callbacks(TestDiagnostics)),
    "mlplab CustomScalarsLayout": Row(
        lambda tmp: {"logger": [CSVLogger(tmp), TensorBoardLogger(tmp)], "callbacks": [CustomScalarsLayout()]}
    ),
    "BasePredictionWriter": Row(callbacks(CSVPredictionWriter)),  # (mlplab's CSVPredictionWriter is one)
    # ------------------------------------------------------------------ loggers, tuners, precisions, profilers, flags
    "TensorBoardLogger": Row(lambda tmp: {"logger": [CSVLogger(tmp), TensorBoardLogger(tmp)]}),
    "Tuner.lr_find": Row(path=LIGHTNING, tuner="lr_find"),
    "Tuner.scale_batch_size": Row(tuner="scale_batch_size"),
    "precision 32-true": Row(lambda tmp: {"precision": "32-true"}),
    "precision bf16-mixed": Row(lambda tmp: {"precision": "bf16-mixed"}),
    "SimpleProfiler": Row(lambda tmp: {"profiler": "simple"}),
    "AdvancedProfiler": Row(lambda tmp: {"profiler": "advanced"}),
    "gradient_clip_val": Row(lambda tmp: {"gradient_clip_val": 0.5}, LIGHTNING),
    "accumulate_grad_batches": Row(lambda tmp: {"accumulate_grad_batches": 2}, LIGHTNING),
    "val_check_interval": Row(lambda tmp: {"val_check_interval": 3}),
    "max_steps mid-epoch": Row(lambda tmp: {"max_steps": 10}),
    "overfit_batches": Row(lambda tmp: {"overfit_batches": 2}),
    "OneCycleLR": Row(model={"lr_scheduler": functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.05)}),
}

# lightning.pytorch.callbacks that do not apply to a fit of LitMLP on one device, and why
NOT_APPLICABLE = {
    "Callback": "the base class: a user callback (the per-batch recorder of every row is one)",
    "Checkpoint": "the base class of ModelCheckpoint",
    "ProgressBar": "the base class of the two progress bars",
    "WeightAveraging": "the base class of EMAWeightAveraging (mlplab's FusedEMAWeightAveraging is another subclass)",
    "BaseFinetuning": "abstract: a user subclass overrides on_fit_start and takes Lightning's step",
    "BackboneFinetuning": "needs a `backbone` attribute (a pretrained feature extractor); an MLP has none",
}


class Recorder(Callback):
    """A user callback that reads what Lightning documents: the batch and ``outputs["loss"]`` of every step."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, int, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen.append((trainer.global_step, batch_idx, int(batch[1].sum()), outputs["loss"].item()))


def logged_values(folder) -> dict[tuple[str, str], float]:
    """Every value the CSV logger wrote, by (step, key); values of the machine's clock are left out."""
    with open(next(folder.rglob("metrics.csv"))) as file:
        rows = list(csv.DictReader(file))
    timed = ("cpu_", "time", "throughput", "samples_per_sec", "batches_per_sec", "items_per_sec", "flops")
    return {
        (row["step"], key): float(v)
        for row in rows
        for key, v in row.items()
        if v not in ("", None) and key != "step" and not any(t in key for t in timed)
    }


def run(row: Row, tiny_dm_factory, tmp_path, steps_per_call: int) -> dict[str, Any]:
    seed_everything(7)
    folder = tmp_path / f"k{steps_per_call}"
    model = LitMLP(hidden_dims=[32, 16], steps_per_call=steps_per_call, **row.model)
    recorder = Recorder()
    options = {"logger": CSVLogger(folder), "max_epochs": 3, "deterministic": True, "log_every_n_steps": 2}
    options.update(row.trainer(folder))
    options["callbacks"] = [*options.get("callbacks", []), recorder]
    trainer = quiet_trainer(folder, **options)
    datamodule = tiny_dm_factory(batch_size=30)
    result: dict[str, Any] = {}
    if row.tuner == "lr_find":
        finder = Tuner(trainer).lr_find(model, datamodule=datamodule, num_training=20)
        result = {"suggestion": finder.suggestion(), "losses": finder.results["loss"], "lr": model.lr}
    elif row.tuner == "scale_batch_size":
        result = {"batch_size": Tuner(trainer).scale_batch_size(model, datamodule=datamodule, max_trials=2, steps_per_trial=2)}
    if row.tuner:  # the row's path is the tuner's; then the same Trainer fits with what it found
        result["grouped"] = not model.automatic_optimization
    trainer.fit(model, datamodule=datamodule)
    trainer.save_checkpoint(folder / "end.ckpt")  # (writes the loggers' pending values)
    return {
        "grouped": not model.automatic_optimization,
        "model": model,
        "trainer": trainer,
        "seen": recorder.seen,
        "folder": folder,
        **result,
    }


@pytest.mark.parametrize("name", list(ROWS))
def test_same_training_with_grouped_steps_or_lightnings_step(tiny_dm_factory, tmp_path, caplog, name):
    row = ROWS[name]
    one = run(row, tiny_dm_factory, tmp_path, 1)
    with caplog.at_level("INFO"):
        four = run(row, tiny_dm_factory, tmp_path, 4)
    assert four["grouped"] == (row.path == SPEED), caplog.text[-2000:]
    assert (FALLBACK_LINE in caplog.text) == (row.path == LIGHTNING)
    assert one["trainer"].global_step == four["trainer"].global_step
    assert one["seen"] == four["seen"] and one["seen"], "a per-batch callback saw other batches or outputs"
    for (key, a), (_, b) in zip(one["model"].state_dict().items(), four["model"].state_dict().items(), strict=True):
        assert torch.equal(a, b), key
    logged_one, logged_four = logged_values(one["folder"]), logged_values(four["folder"])
    assert logged_one and logged_one.keys() == logged_four.keys()
    for key, value in logged_one.items():  # (epoch losses are float sums taken in another grouping)
        assert math.isclose(value, logged_four[key], rel_tol=1e-6) or (math.isnan(value) and math.isnan(logged_four[key])), key
    for key in ("suggestion", "losses", "lr", "batch_size"):
        if key in one:
            assert one[key] == four[key] or (key == "losses" and str(one[key]) == str(four[key])), key


def test_the_commands_default_callbacks_keep_the_speed_path(scratch_checkout, monkeypatch):
    from mlplab.cli import MLPLabCLI
    from mlplab.grouped.eligibility import one_step_per_call_reason

    monkeypatch.setattr("sys.argv", ["mlplab"])
    cli = MLPLabCLI(args=["--config", "configs/mnist.yaml", "--trainer.logger.init_args.save_dir=logs"], run=False)
    assert one_step_per_call_reason(cli.model, cli.trainer, LitMLP) is None


def test_every_lightning_callback_has_a_row():
    missing = [name for name in lightning_callbacks.__all__ if name not in ROWS and name not in NOT_APPLICABLE]
    assert not missing, f"Lightning callbacks without a row in ROWS (or a reason in NOT_APPLICABLE): {missing}"
