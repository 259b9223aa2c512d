"""LitMLP with a real Trainer on tiny IDX data: training loop, metrics, pre-processing, checkpoints."""

import functools

import pytest
import torch
from lightning.pytorch import Callback, seed_everything

from mlplab import LitMLP
from tests.conftest import quiet_trainer


def test_fast_dev_run(tiny_dm_factory, tmp_path):
    model = LitMLP(hidden_dims=[32])
    quiet_trainer(tmp_path, fast_dev_run=True).fit(model, datamodule=tiny_dm_factory())
    assert model.preprocessor.is_fitted


def test_learns_the_tiny_task_and_logs_every_metric(tiny_dm_factory, tmp_path):
    seed_everything(0)
    dm = tiny_dm_factory(batch_size=20)
    model = LitMLP(hidden_dims=[64], optimizer=functools.partial(torch.optim.Adam, lr=3e-3))
    trainer = quiet_trainer(tmp_path, max_epochs=8, enable_checkpointing=False)
    trainer.fit(model, datamodule=dm)
    fit_metrics = dict(trainer.callback_metrics)
    for key in ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "hp_metric"):
        assert key in fit_metrics, key
    assert fit_metrics["val/acc_best"] >= fit_metrics["val/acc"]
    assert fit_metrics["hp_metric"] == fit_metrics["val/acc_best"]
    trainer.test(model, datamodule=dm, verbose=False)
    assert trainer.callback_metrics["test/acc"] > 0.9
    assert trainer.callback_metrics["test/loss"] < fit_metrics["train/loss"] * 10


def test_preprocessor_travels_in_checkpoint(tiny_dm_factory, tmp_path):
    dm = tiny_dm_factory()
    model = LitMLP(hidden_dims=[16])
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(model, datamodule=dm)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    assert torch.load(path, weights_only=True)["state_dict"]["preprocessor.fitted"]
    restored = LitMLP.load_from_checkpoint(path, weights_only=True)
    assert restored.hparams.optimizer["class_path"] == "torch.optim.adam.Adam"
    assert isinstance(restored.configure_optimizers(), torch.optim.Adam)
    assert torch.equal(restored.preprocessor.shift, dm.preprocessor.shift)
    x = dm.splits["test"][0][:8]
    model.eval(), restored.eval()
    assert torch.allclose(model(x), restored(x))


def test_reduce_lr_on_plateau_monitors_val_loss(tiny_dm_factory, tmp_path):
    model = LitMLP(
        hidden_dims=[16],
        optimizer=functools.partial(torch.optim.SGD, lr=0.1),
        lr_scheduler=functools.partial(torch.optim.lr_scheduler.ReduceLROnPlateau, patience=0, factor=0.5, threshold=10.0),
    )
    trainer = quiet_trainer(tmp_path, max_epochs=3, enable_checkpointing=False)
    trainer.fit(model, datamodule=tiny_dm_factory())
    # threshold=10 makes every epoch count as "no improvement": lr halves after each validation
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)


def test_python_built_optimizer_is_stored_as_config_and_rebuilt(tiny_dm_factory, tmp_path):
    model = LitMLP(hidden_dims=[8], optimizer=functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9))
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(model, datamodule=tiny_dm_factory())
    trainer.save_checkpoint(tmp_path / "sgd.ckpt")
    restored = LitMLP.load_from_checkpoint(tmp_path / "sgd.ckpt", weights_only=True)
    optimizer = restored.configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["lr"] == 0.05 and optimizer.defaults["momentum"] == 0.9


def test_compiled_training_and_checkpoint_loads_uncompiled(tiny_dm_factory, tmp_path):
    model = LitMLP(hidden_dims=[16], compile=True)
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(model, datamodule=tiny_dm_factory())
    assert model.net_compiled
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    state = torch.load(tmp_path / "c.ckpt", weights_only=True)["state_dict"]
    assert "net.output.weight" in state and not any("_orig_mod" in key for key in state)
    plain = LitMLP.load_from_checkpoint(tmp_path / "c.ckpt", weights_only=True, compile=False).eval()
    x = torch.rand(4, 1, 28, 28)
    assert torch.allclose(plain(x), model.eval()(x), atol=1e-5)


def test_lr_reads_the_injected_optimizers_learning_rate_and_applies_a_new_one(tiny_dm_factory, tmp_path):
    import functools

    from lightning.pytorch.tuner import Tuner

    assert LitMLP().lr == 1e-3  # Adam's default
    model = LitMLP(hidden_dims=[8], optimizer=functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9))
    assert model.lr == 0.1
    model.lr = 0.02  # what Lightning's finder does with its suggestion
    assert model.configure_optimizers().param_groups[0]["lr"] == 0.02
    assert model.hparams.optimizer["init_args"] == {"lr": 0.02, "momentum": 0.9}  # a reloaded checkpoint builds the same optimizer

    trainer = quiet_trainer(tmp_path, max_epochs=10)  # (the search stops after num_training steps)
    finder = Tuner(trainer).lr_find(model, datamodule=tiny_dm_factory(batch_size=30), num_training=30, min_lr=1e-4, max_lr=1.0)
    assert finder.suggestion() is not None and model.lr == finder.suggestion()
    checkpoint = tmp_path / "found.ckpt"
    trainer.save_checkpoint(checkpoint)
    reloaded = LitMLP.load_from_checkpoint(checkpoint)
    assert reloaded.lr == pytest.approx(finder.suggestion())


class SpoilWeightsAtEpoch(Callback):
    """Zero the model's weights as epoch ``epoch``'s validation starts (it scores worse); records val/acc and val/acc_best per epoch."""

    def __init__(self, epoch: int) -> None:
        self.epoch, self.history = epoch, []

    def on_validation_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch and not trainer.sanity_checking:
            with torch.no_grad():
                for parameter in pl_module.net.parameters():
                    parameter.zero_()  # every class scores the same: the accuracy of always answering class 0

    def on_validation_end(self, trainer, pl_module):  # (after the module logged the epoch's metrics)
        if not trainer.sanity_checking:
            self.history.append((trainer.callback_metrics["val/acc"].item(), trainer.callback_metrics["val/acc_best"].item()))


def test_val_acc_best_keeps_the_best_epoch_when_the_run_gets_worse(tiny_dm_factory, tmp_path):
    seed_everything(0)
    spoil = SpoilWeightsAtEpoch(3)
    model = LitMLP(hidden_dims=[32], optimizer=functools.partial(torch.optim.Adam, lr=3e-3))
    trainer = quiet_trainer(tmp_path, max_epochs=4, enable_checkpointing=False, callbacks=[spoil])
    trainer.fit(model, datamodule=tiny_dm_factory(batch_size=20))
    accs = [acc for acc, _ in spoil.history]
    assert max(accs[:3]) > 0.5 and accs[3] < max(accs[:3]) - 0.2, accs  # it got worse at epoch 3
    assert [best for _, best in spoil.history] == [max(accs[: i + 1]) for i in range(len(accs))]  # the running best, never the last
    assert trainer.callback_metrics["val/acc_best"].item() == max(accs) > accs[-1]
    assert trainer.callback_metrics["hp_metric"].item() == max(accs)
