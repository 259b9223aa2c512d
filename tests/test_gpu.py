"""The GPU path (``pytest -m gpu``, run by ``benchmarks/gpu_check.sh``): skipped where torch sees no CUDA device, as in CI.

The speed path keeps the splits on the model's device and cuts batches there; these tests check that it
does so on a GPU, that the grouped steps train as Lightning's own step does there, and that the
shipped default config fits through the real CLI on the GPU.
"""

import functools
import subprocess

import pytest
import torch
from lightning.pytorch import seed_everything

from mlplab import LitMLP
from tests.conftest import MLPLAB, RESULT_LINE, ROOT, quiet_trainer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device")]


def fit_on_gpu(tiny_dm_factory, tmp_path, steps_per_call):
    seed_everything(7)
    model = LitMLP(hidden_dims=[32, 16], steps_per_call=steps_per_call, optimizer=functools.partial(torch.optim.Adam, lr=3e-3))
    trainer = quiet_trainer(tmp_path / str(steps_per_call), accelerator="gpu", devices=1, max_epochs=3, enable_checkpointing=False)
    datamodule = tiny_dm_factory(batch_size=30)
    trainer.fit(model, datamodule=datamodule)
    return model, trainer, datamodule


def test_the_splits_live_on_the_gpu_and_grouped_steps_train_as_lightnings_step(tiny_dm_factory, tmp_path):
    one, trainer_one, _ = fit_on_gpu(tiny_dm_factory, tmp_path, 1)
    grouped, trainer_grouped, datamodule = fit_on_gpu(tiny_dm_factory, tmp_path, 4)
    assert all(x.is_cuda and y.is_cuda for x, y in datamodule.splits.values())
    assert not grouped.automatic_optimization and trainer_one.global_step == trainer_grouped.global_step == 21
    for (name, a), (_, b) in zip(one.state_dict().items(), grouped.state_dict().items(), strict=True):
        assert a.is_cuda and torch.allclose(a, b, rtol=1e-5, atol=1e-6), name  # (cuBLAS may sum in another order)


def test_the_default_config_fits_through_the_cli_on_the_gpu(tmp_path):
    result = subprocess.run(
        [MLPLAB, "fit", "--config", "configs/mnist.yaml", "--trainer.accelerator=gpu", "--trainer.max_epochs=1",
         f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.enable_progress_bar=false"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    match = RESULT_LINE.search(result.stdout)
    assert match and float(match["acc"]) > 0.95, result.stdout[-2000:]
