"""LitMLP and mlplab's DataModules configured as lightning-hydra-template configures its own: Hydra's compose and instantiate.

The config groups below are the template's ``configs/data/mnist.yaml``, ``configs/model/mnist.yaml``,
``configs/callbacks/model_checkpoint.yaml`` and ``configs/trainer/default.yaml`` with their targets pointed at
mlplab, and its debug settings (fractions of the batches). Hydra hands ``hidden_dims`` over as a ``ListConfig``
and the optimizer and scheduler as ``functools.partial``; no ``_convert_`` is set.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mlplab.data.sources import FASHION_MNIST, ensure_dataset
from tests.conftest import REAL_DATA_DIR

hydra = pytest.importorskip("hydra")
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import ListConfig  # noqa: E402

CONFIGS = {
    "train.yaml": """
defaults:
  - data: mnist
  - model: mnist
  - callbacks: model_checkpoint
  - trainer: default
  - _self_
seed: 12345
""",
    "data/mnist.yaml": """
_target_: mlplab.data.FashionMNISTDataModule
data_dir: ${data_dir}
batch_size: 128
val_size: 5000
num_workers: 0
pin_memory: False
""",
    "model/mnist.yaml": """
_target_: mlplab.LitMLP
hidden_dims: [64, 128, 64]
optimizer:
  _target_: torch.optim.Adam
  _partial_: true
  lr: 0.001
  weight_decay: 0.0
  betas: [0.9, 0.999]
lr_scheduler:
  _target_: torch.optim.lr_scheduler.ReduceLROnPlateau
  _partial_: true
  mode: min
  factor: 0.1
  patience: 10
steps_per_call: 1
compile: false
""",
    "callbacks/model_checkpoint.yaml": """
model_checkpoint:
  _target_: lightning.pytorch.callbacks.ModelCheckpoint
  dirpath: ${output_dir}/checkpoints
  filename: "epoch_{epoch:03d}"
  monitor: "val/acc"
  mode: "max"
  save_last: true
  auto_insert_metric_name: false
""",
    "trainer/default.yaml": """
_target_: lightning.pytorch.trainer.Trainer
default_root_dir: ${output_dir}
min_epochs: 1
max_epochs: 2
accelerator: cpu
devices: 1
check_val_every_n_epoch: 1
deterministic: false
logger: false
enable_progress_bar: false
""",
}

# what reloading the best checkpoint in a fresh Python sees
RELOAD = """
import json, sys, torch
from mlplab import LitMLP
path = sys.argv[1]
checkpoint = torch.load(path, weights_only=True)
model = LitMLP.load_from_checkpoint(path)
print(json.dumps({
    "hidden_dims": list(checkpoint["hyper_parameters"]["hidden_dims"]),
    "optimizer": checkpoint["hyper_parameters"]["optimizer"],
    "data_pin_memory": checkpoint["datamodule_hyper_parameters"]["pin_memory"],
    "optimizer_built": type(optimizer := model.optimizer_factory(model.parameters())).__name__,
    "scheduler_built": type(model.lr_scheduler_factory(optimizer)).__name__,
    "hidden_shapes": [list(layer.weight.shape) for layer in model.net.modules() if isinstance(layer, torch.nn.Linear)],
}))
"""


def write_configs(folder: Path) -> Path:
    for name, text in CONFIGS.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


@pytest.mark.parametrize("steps_per_call", [1, 64])
def test_a_hydra_config_like_the_templates_fits_tests_the_best_checkpoint_and_reloads_it_in_a_fresh_process(tmp_path, steps_per_call):
    ensure_dataset(FASHION_MNIST, REAL_DATA_DIR)
    overrides = [
        f"+data_dir={REAL_DATA_DIR}",
        f"+output_dir={tmp_path / 'run'}",
        f"model.steps_per_call={steps_per_call}",
        # the template's debug settings: fractions of each stage's batches
        "+trainer.limit_train_batches=0.1",
        "+trainer.limit_val_batches=0.1",
        "+trainer.limit_test_batches=0.1",
    ]
    with initialize_config_dir(config_dir=str(write_configs(tmp_path / "configs")), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    callbacks = [instantiate(callback) for callback in cfg.callbacks.values()]
    trainer = instantiate(cfg.trainer, callbacks=callbacks)
    assert isinstance(cfg.model.hidden_dims, ListConfig) and isinstance(model.hparams.hidden_dims, list)

    trainer.fit(model=model, datamodule=datamodule)
    # 55000 / 128 = 430 batches, a tenth is 43 per epoch; validation 5000 / 128 = 40 batches, a tenth is 4
    assert trainer.global_step == 2 * 43
    assert trainer.num_val_batches == [4]
    assert model.grouped_steps == (steps_per_call > 1)
    results = trainer.test(model=model, datamodule=datamodule, ckpt_path="best", verbose=False)
    assert trainer.num_test_batches == [int(0.1 * 79)]  # 10000 / 128 = 79 batches
    assert results[0]["test/acc"] > 0.6  # 86 Adam steps on Fashion-MNIST (about 0.75 here)
    best = trainer.checkpoint_callback.best_model_path

    reloaded = subprocess.run([sys.executable, "-c", RELOAD, best], capture_output=True, text=True, timeout=300)
    assert reloaded.returncode == 0, reloaded.stderr[-3000:]
    seen = json.loads(reloaded.stdout.strip().splitlines()[-1])
    assert seen["hidden_dims"] == [64, 128, 64]
    assert seen["optimizer"] == {
        "class_path": "torch.optim.adam.Adam",
        "init_args": {"lr": 0.001, "weight_decay": 0.0, "betas": [0.9, 0.999]},
    }
    assert seen["data_pin_memory"] is False
    assert (seen["optimizer_built"], seen["scheduler_built"]) == ("Adam", "ReduceLROnPlateau")
    assert seen["hidden_shapes"] == [[64, 784], [128, 64], [64, 128], [10, 64]]
    torch.load(best, weights_only=True)  # (and in this process too)
