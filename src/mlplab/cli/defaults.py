"""The defaults of ``mlplab fit | validate | test | predict``: callback groups, top-level keys, help text.

Each default callback is a config group a user can tune or switch off (``--early_stopping=null``).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint

import mlplab.data
from mlplab.callbacks import CSVPredictionWriter, LayerGradientNorms
from mlplab.dashboard import CustomScalarsLayout
from mlplab.data.in_memory import InMemoryDataModule
from mlplab.lr_finder import LearningRateFinderReport

OTHER_COMMANDS = (
    "Other commands: `mlplab data download --dataset {mnist,fashion_mnist,all}` fetches and verifies the data; "
    "`mlplab export --ckpt_path CKPT --format {state_dict,safetensors,torchscript,onnx}` exports a trained model; "
    "`mlplab tune --config ... --space SPACE.yaml --study NAME --n_trials N` searches hyper-parameters with Optuna; "
    "`mlplab presets` lists the shipped configs, which --config takes by name (`--config seeds/d2l_fashion_mlp`)."
)


# the fit config's own top-level keys (the callback groups below are the others)
TOP_LEVEL_KEYS = ("seed_everything", "trainer", "model", "data", "test_after_fit", "optimizer", "lr_scheduler", "ckpt_path", "weights_only")


def class_default(cls: type, **init_args: Any) -> dict[str, Any]:
    """A config default naming ``cls`` by import path, as LightningCLI's subclass mode writes it."""
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
    # TensorBoard's Custom Scalars page: train against validation on one chart per metric
    "dashboard": (CustomScalarsLayout, {"d2l_chart": False}),
}
# off unless a config switches them on (`gradient_norms: {class_path: mlplab.callbacks.LayerGradientNorms}`;
# configs/lr_find.yaml switches on the learning-rate finder)
OFF_BY_DEFAULT_CALLBACKS: dict[str, type[Callback]] = {"gradient_norms": LayerGradientNorms, "lr_finder": LearningRateFinderReport}


def config_keys() -> list[str]:
    """Every top-level key a fit config may have (what an unknown key is compared with)."""
    return [*TOP_LEVEL_KEYS, *OPTIONAL_CALLBACKS, *OFF_BY_DEFAULT_CALLBACKS]


def data_module_names() -> list[str]:
    """The DataModules ``mlplab.data`` offers to ``data.class_path`` (the IDX base class aside)."""
    return sorted(
        name
        for name, value in vars(mlplab.data).items()
        if isinstance(value, type) and issubclass(value, InMemoryDataModule) and value is not InMemoryDataModule and name != "IDXDataModule"
    )
