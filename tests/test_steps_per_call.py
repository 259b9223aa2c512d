"""Several optimizer steps per training_step call must change nothing but speed."""

import functools

import pytest
import torch
from lightning.pytorch import Callback, seed_everything
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import SingleDeviceStrategy

from mlplab import FusedEMAWeightAveraging, LitMLP, stage_metrics
from mlplab.callbacks import LayerGradientNorms, TrainBatchImageGrid
from tests.conftest import quiet_trainer

CASES = {
    "adam+dropout+l1": {"optimizer": functools.partial(torch.optim.Adam, lr=3e-3), "dropout": 0.3, "l1": 1e-4},
    "sgd+steplr(epoch)": {
        "optimizer": functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9),
        "lr_scheduler": functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5),
    },
    "sgd+onecycle(step)": {
        "optimizer": functools.partial(torch.optim.SGD, lr=0.1),
        "lr_scheduler": functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.5),
    },
    "sgd+plateau": {
        "optimizer": functools.partial(torch.optim.SGD, lr=0.1),
        "lr_scheduler": functools.partial(torch.optim.lr_scheduler.ReduceLROnPlateau, patience=0, threshold=10.0),
    },
    "lbfgs": {"optimizer": functools.partial(torch.optim.LBFGS, lr=0.5, max_iter=3)},
    # random augmentation and dropout draw from one generator: grouped batches are augmented as their step comes
    "augment+dropout": {"dropout": 0.3, "data_kwargs": {"augment_translate": 0.1, "augment_rotate": 10.0}},
}


def train(tiny_dm_factory, tmp_path, steps_per_call, epochs=3, trainer_kwargs=None, data_kwargs=None, **kwargs):
    seed_everything(7)
    model = LitMLP(hidden_dims=[32, 16], steps_per_call=steps_per_call, **kwargs)
    trainer = quiet_trainer(
        tmp_path / str(steps_per_call), max_epochs=epochs, deterministic=True, enable_checkpointing=False, **(trainer_kwargs or {})
    )
    trainer.fit(model, datamodule=tiny_dm_factory(batch_size=30, **(data_kwargs or {})))
    return model, trainer


@pytest.mark.parametrize("case", list(CASES))
def test_same_weights_steps_and_metrics_as_one_step_per_call(tiny_dm_factory, tmp_path, case):
    one, trainer_one = train(tiny_dm_factory, tmp_path, 1, **CASES[case])
    four, trainer_four = train(tiny_dm_factory, tmp_path, 4, **CASES[case])
    assert one.automatic_optimization and not four.automatic_optimization
    assert trainer_one.global_step == trainer_four.global_step == 3 * 7  # 200 samples / batch 30 = 7 steps per epoch
    for (name, a), (_, b) in zip(one.state_dict().items(), four.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    for key in ("train/acc", "val/loss", "val/acc", "val/acc_best"):
        assert torch.equal(trainer_one.callback_metrics[key], trainer_four.callback_metrics[key]), key
    # the same per-step losses, summed in another grouping: equal up to float rounding
    assert torch.allclose(trainer_one.callback_metrics["train/loss"], trainer_four.callback_metrics["train/loss"], rtol=1e-6, atol=0)
    lrs = [trainer.optimizers[0].param_groups[0]["lr"] for trainer in (trainer_one, trainer_four)]
    assert lrs[0] == lrs[1]


@pytest.mark.parametrize("max_steps", [10, 3, 7])
@pytest.mark.parametrize("case", ["sgd+onecycle(step)", "sgd+steplr(epoch)", "sgd+plateau"])
def test_max_steps_inside_a_group_stops_where_one_step_per_call_stops(tiny_dm_factory, tmp_path, case, max_steps):
    # 7 batches per epoch, groups of 4 and 3: 10 and 3 stop inside a group, 7 at the first epoch's end.
    # OneCycleLR gets total_steps = max_steps and refuses to be stepped once more; Lightning steps epoch
    # schedulers only after an epoch that ran to its end (plateau: before any validation there is no val/loss)
    one, trainer_one = train(tiny_dm_factory, tmp_path, 1, epochs=5, trainer_kwargs={"max_steps": max_steps}, **CASES[case])
    four, trainer_four = train(tiny_dm_factory, tmp_path, 4, epochs=5, trainer_kwargs={"max_steps": max_steps}, **CASES[case])
    assert not four.automatic_optimization and trainer_one.global_step == trainer_four.global_step == max_steps
    assert trainer_four.train_dataloader.batches_served == (max_steps % 7 or 7)  # batches of the last epoch trained on
    for (name, a), (_, b) in zip(one.state_dict().items(), four.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert trainer_one.lr_scheduler_configs[0].scheduler.state_dict() == trainer_four.lr_scheduler_configs[0].scheduler.state_dict()


def test_metrics_fed_in_chunks_equal_metrics_fed_once_per_epoch(tiny_dm_factory, tmp_path, monkeypatch):
    # step outputs wait for one bulk metric update per epoch, or per MAX_PENDING_STEPS steps when there are more
    def fit_and_test(folder):
        model, trainer = train(tiny_dm_factory, tmp_path / folder, 4, epochs=2, data_kwargs={"eval_batch_size": 7})
        fit_metrics = dict(trainer.callback_metrics)
        trainer.test(model, datamodule=trainer.datamodule, verbose=False)
        return {**fit_metrics, **trainer.callback_metrics}

    once = fit_and_test("once")  # 7 training steps and 6 validation batches per epoch: one update each
    monkeypatch.setattr(stage_metrics, "MAX_PENDING_STEPS", 2)
    chunked = fit_and_test("chunked")
    assert once.keys() == chunked.keys()
    for key in ("train/acc", "val/acc", "val/acc_best", "test/acc"):  # counts of correct predictions
        assert torch.equal(once[key], chunked[key]), key
    for key in ("train/loss", "val/loss", "test/loss"):  # float64 sums in another grouping
        assert torch.allclose(once[key], chunked[key], rtol=1e-6, atol=0), key


def test_grouped_loader_serves_the_same_batches(tiny_dm_factory):
    dm = tiny_dm_factory(batch_size=30)
    dm.setup()
    single = list(dm.train_dataloader())
    dm.group_train_batches(4)
    grouped = dm.train_dataloader()
    groups = list(grouped)
    assert len(grouped) == 7 and [len(g) for g in groups] == [4, 3]  # len() counts batches, as Lightning's loop does
    assert grouped.batches_served == 0  # a group gathers its batches only when they are used
    flat = [batch for group in groups for batch in group]
    assert grouped.batches_served == 7
    assert all(torch.equal(a[1], b[1]) for a, b in zip(single, flat, strict=True))


def test_fast_dev_run_stops_inside_a_group_and_validates(tiny_dm_factory, tmp_path):
    # Lightning's fast_dev_run=N: N training batches, the epoch's end, then N validation batches
    model, trainer = train(tiny_dm_factory, tmp_path, 4, trainer_kwargs={"fast_dev_run": 3})
    assert not model.automatic_optimization and trainer.global_step == 3
    assert trainer.train_dataloader.batches_served == 3
    assert "val/loss" in trainer.callback_metrics


def test_trainer_gradient_clipping_falls_back_to_one_step_per_call(tiny_dm_factory, tmp_path):
    model, trainer = train(tiny_dm_factory, tmp_path, 4, epochs=1, trainer_kwargs={"gradient_clip_val": 0.5})
    assert model.automatic_optimization and trainer.global_step == 7
    assert len(trainer.train_dataloader) == 7  # not grouped


@pytest.mark.parametrize("hook", ["on_after_backward", "on_before_optimizer_step", "on_before_zero_grad"])
def test_a_callback_overriding_an_optimization_hook_gets_lightnings_step_every_batch(tiny_dm_factory, tmp_path, caplog, hook):
    calls = []
    callback = type("TouchesOptimization", (Callback,), {hook: lambda self, trainer, *args: calls.append(trainer.global_step)})()
    model = LitMLP(hidden_dims=[8], steps_per_call=4)
    trainer = quiet_trainer(tmp_path, max_epochs=1, enable_checkpointing=False, callbacks=[callback])
    with caplog.at_level("INFO"):
        trainer.fit(model, datamodule=tiny_dm_factory(batch_size=30))
    assert model.automatic_optimization and calls == list(range(7))
    assert f"the callback TouchesOptimization overrides {hook}" in caplog.text


def test_the_logged_step_metrics_and_gradient_norms_callback_keep_the_speed_path(tiny_dm_factory, tmp_path):
    # mlplab's LayerGradientNorms reads gradients in on_before_optimizer_step: verified, so it keeps the speed path
    model = LitMLP(hidden_dims=[8], steps_per_call=4)
    trainer = quiet_trainer(tmp_path, max_epochs=1, enable_checkpointing=False, callbacks=[LayerGradientNorms(every_n_steps=1)])
    trainer.fit(model, datamodule=tiny_dm_factory(batch_size=30))
    assert not model.automatic_optimization and not model.plain_optimizer_step and trainer.global_step == 7


def test_plain_backward_and_step_when_nothing_needs_the_hooks(tiny_dm_factory, tmp_path):
    model, trainer = train(tiny_dm_factory, tmp_path, 4, epochs=1, trainer_kwargs={"log_every_n_steps": 1})
    assert model.plain_backward and model.plain_optimizer_step
    assert trainer.global_step == 7  # the manual loop's step counter still counts every update
    assert trainer.callback_metrics["train/grad_norm"].item() > 0  # the module's own hook still runs

    assert trainer.fit_loop.epoch_loop.calls_training_step_directly  # one device, no profiler: no wrappers around the call


def test_a_profiled_fit_times_lightnings_training_step_scopes_and_trains_the_same(tiny_dm_factory, tmp_path):
    # with a profiler the grouped loop goes through Lightning's own manual-optimization run, whose scopes it times
    plain, _ = train(tiny_dm_factory, tmp_path / "plain", 4, epochs=2)
    profiled, trainer = train(tiny_dm_factory, tmp_path / "profiled", 4, epochs=2, trainer_kwargs={"profiler": "simple"})
    assert not trainer.fit_loop.epoch_loop.calls_training_step_directly
    recorded = trainer.profiler.recorded_durations
    assert len(recorded["run_training_batch"]) == len(recorded["[Strategy]SingleDeviceStrategy.training_step"]) == 14
    for (name, a), (_, b) in zip(plain.state_dict().items(), profiled.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_a_strategy_subclass_gets_lightnings_step_and_is_called_for_every_batch(tiny_dm_factory, tmp_path, caplog):
    calls = []

    class CountingStrategy(SingleDeviceStrategy):
        def training_step(self, *args, **kwargs):
            calls.append(args[1])  # batch_idx
            return super().training_step(*args, **kwargs)

    with caplog.at_level("INFO"):
        model, _ = train(tiny_dm_factory, tmp_path, 4, epochs=1, trainer_kwargs={"strategy": CountingStrategy(device=torch.device("cpu"))})
    assert model.automatic_optimization and calls == list(range(7))
    assert "the strategy CountingStrategy is not one the speed path is verified with" in caplog.text


@pytest.mark.parametrize("precision", ["bf16-true", "64-true"])
def test_true_precisions_convert_every_batch_of_a_group(tiny_dm_factory, tmp_path, precision):
    # Lightning converts the inputs of *-true precisions with apply_to_collection, which skips a BatchGroup
    one, _ = train(tiny_dm_factory, tmp_path, 1, epochs=1, trainer_kwargs={"precision": precision})
    four, _ = train(tiny_dm_factory, tmp_path, 4, epochs=1, trainer_kwargs={"precision": precision})
    dtype = {"bf16-true": torch.bfloat16, "64-true": torch.float64}[precision]
    assert next(four.net.parameters()).dtype == dtype
    for (name, a), (_, b) in zip(one.state_dict().items(), four.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_a_subclass_overriding_on_before_optimizer_step_gets_lightnings_step(tiny_dm_factory, tmp_path):
    # an override of an optimization hook is the user's code for Lightning's own step: it gets that step
    class CountsSteps(LitMLP):
        def on_before_optimizer_step(self, optimizer):
            self.seen_steps.append(self.global_step)
            super().on_before_optimizer_step(optimizer)

    seed_everything(7)
    model = CountsSteps(hidden_dims=[8], steps_per_call=4)
    model.seen_steps = []
    trainer = quiet_trainer(tmp_path, max_epochs=2, enable_checkpointing=False, log_every_n_steps=5)
    trainer.fit(model, datamodule=tiny_dm_factory(batch_size=30))
    assert model.automatic_optimization
    assert model.seen_steps == list(range(14)) and model.grad_norm_logged_at == 9


def test_bf16_mixed_precision_trains_with_several_steps_per_call(tiny_dm_factory, tmp_path):
    model, trainer = train(
        tiny_dm_factory,
        tmp_path,
        4,
        epochs=2,
        trainer_kwargs={"precision": "bf16-mixed"},
        optimizer=functools.partial(torch.optim.Adam, lr=3e-3),
    )
    assert not model.automatic_optimization and model.plain_backward and model.plain_optimizer_step  # bf16 needs no scaler
    assert trainer.global_step == 14 and torch.isfinite(trainer.callback_metrics["train/loss"])
    assert all(p.dtype == torch.float32 for p in model.parameters())  # mixed precision keeps fp32 weights
    assert trainer.callback_metrics["val/acc"] > 0.5


@pytest.mark.parametrize("steps_per_call", [1, 4])
def test_grad_norm_is_logged_at_the_same_optimizer_steps_grouped_or_not(tiny_dm_factory, tmp_path, steps_per_call):
    logged_at = []

    class RecordsGradNormSteps(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if "train/grad_norm" in trainer.callback_metrics:
                logged_at.append(pl_module.grad_norm_logged_at)

    train(
        tiny_dm_factory, tmp_path, steps_per_call, epochs=2, trainer_kwargs={"log_every_n_steps": 5, "callbacks": [RecordsGradNormSteps()]}
    )
    # 14 optimizer steps (0..13): those after which Lightning writes step metrics ((step + 1) % 5 == 0)
    assert sorted(set(logged_at)) == [4, 9]


def test_worker_dataloader_batches_are_single_batches(tiny_dm_factory, tmp_path):
    # a DataLoader collates (x, y) into a list: one batch, not a group, whatever steps_per_call says
    seed_everything(7)
    model = LitMLP(hidden_dims=[16], steps_per_call=4)
    trainer = quiet_trainer(tmp_path, max_epochs=1, enable_checkpointing=False)
    trainer.fit(model, datamodule=tiny_dm_factory(batch_size=30, num_workers=1))
    assert trainer.global_step == 7


def test_image_grid_of_an_augmented_group_changes_nothing(tiny_dm_factory, tmp_path):
    # the callback looks at the group's first batch before the step trains on it: one augmentation draw, not two
    models = [
        train(
            tiny_dm_factory,
            tmp_path / str(k),
            k,
            epochs=1,
            dropout=0.3,
            data_kwargs={"augment_rotate": 10.0},
            trainer_kwargs={"logger": TensorBoardLogger(tmp_path / str(k)), "callbacks": [TrainBatchImageGrid()]},
        )[0]
        for k in (1, 4)
    ]
    for (name, a), (_, b) in zip(models[0].state_dict().items(), models[1].state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_weight_averaging_updates_once_per_optimizer_step_when_grouped(tiny_dm_factory, tmp_path):
    # EMAWeightAveraging updates its average in on_train_batch_end, which the grouped loop calls for every batch
    def train_with_ema(steps_per_call):
        ema = EMAWeightAveraging(decay=0.9)
        model, trainer = train(tiny_dm_factory, tmp_path / "ema", steps_per_call, trainer_kwargs={"callbacks": [ema]})
        return model, trainer, ema

    one, _, _ = train_with_ema(1)
    four, trainer_four, ema_four = train_with_ema(4)
    plain, _ = train(tiny_dm_factory, tmp_path / "plain", 4)
    assert not four.automatic_optimization and trainer_four.train_dataloader.group == 4
    assert ema_four._average_model.n_averaged.item() == trainer_four.global_step == 3 * 7  # one update per optimizer step
    for (name, a), (_, b) in zip(one.state_dict().items(), four.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    # after fit the model holds the average, not the last weights
    assert not torch.equal(four.net.state_dict()["hidden.0.branch.0.weight"], plain.net.state_dict()["hidden.0.branch.0.weight"])


def test_fused_ema_averages_like_lightnings_ema(tiny_dm_factory, tmp_path):
    averages = {}
    for callback_class in (EMAWeightAveraging, FusedEMAWeightAveraging):
        ema = callback_class(decay=0.9, update_starting_at_step=5)
        model, _ = train(tiny_dm_factory, tmp_path / callback_class.__name__, 4, trainer_kwargs={"callbacks": [ema]})
        assert not model.automatic_optimization and ema._average_model.n_averaged.item() == 3 * 7 - 5
        averages[callback_class] = model.state_dict()
    lightning, fused = averages.values()
    for (name, a), (_, b) in zip(lightning.items(), fused.items(), strict=True):
        assert torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-6), name


def test_testing_a_checkpoint_after_fit_uses_the_averaged_weights(tiny_dm_factory, tmp_path):
    # a checkpoint written during fit holds the average as its state_dict and the raw weights as
    # "current_model_state" (for resuming); Lightning's WeightAveraging loads the raw ones into any later
    # stage run by the Trainer that did the fit, such as the test after fit
    seed_everything(7)
    model = LitMLP(hidden_dims=[32, 16], steps_per_call=4)
    checkpoint_callback = ModelCheckpoint(dirpath=tmp_path, filename="ema")
    trainer = quiet_trainer(tmp_path, max_epochs=3, callbacks=[FusedEMAWeightAveraging(decay=0.9), checkpoint_callback])
    trainer.fit(model, datamodule=tiny_dm_factory(batch_size=30))
    checkpoint = torch.load(checkpoint_callback.best_model_path, weights_only=True)
    key = "net.hidden.0.branch.0.weight"
    averaged, raw = checkpoint["state_dict"][key], checkpoint["current_model_state"][key]
    assert not torch.equal(raw, averaged)
    trainer.test(model, datamodule=trainer.datamodule, ckpt_path="best", verbose=False)
    assert torch.equal(model.state_dict()[key], averaged)


def test_resuming_with_ema_ends_where_an_uninterrupted_run_ends(tiny_dm_factory, tmp_path):
    # resuming restores both the raw weights (training continues from them) and the average
    def fit(folder, max_epochs, ckpt_path=None):
        seed_everything(7)
        model = LitMLP(hidden_dims=[32, 16], steps_per_call=4)
        ema = FusedEMAWeightAveraging(decay=0.9)
        trainer = quiet_trainer(
            tmp_path / folder,
            max_epochs=max_epochs,
            deterministic=True,
            callbacks=[ema, ModelCheckpoint(dirpath=tmp_path / folder, filename="last", save_top_k=-1, enable_version_counter=False)],
        )
        trainer.fit(model, datamodule=tiny_dm_factory(batch_size=30), ckpt_path=ckpt_path)
        return model, ema

    uninterrupted, ema_uninterrupted = fit("whole", 3)
    fit("first", 2)
    resumed, ema_resumed = fit("first", 3, ckpt_path=tmp_path / "first" / "last.ckpt")
    assert ema_resumed._average_model.n_averaged.item() == ema_uninterrupted._average_model.n_averaged.item() == 21
    for (name, a), (_, b) in zip(uninterrupted.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("version", ["2.6.0", "2.6.6", "2.6.99"])
def test_inside_the_verified_lightning_range_the_fit_takes_the_speed_path(tiny_dm_factory, tmp_path, monkeypatch, caplog, version):
    import lightning

    from mlplab.grouped import lightning_release_reason

    monkeypatch.setattr(lightning, "__version__", version)
    assert lightning_release_reason() is None
    with caplog.at_level("INFO"):
        model, trainer = train(tiny_dm_factory, tmp_path, 4, epochs=1)
    assert model.grouped_steps and not model.automatic_optimization and trainer.train_dataloader.group == 4
    assert "Lightning's own step" not in caplog.text


@pytest.mark.parametrize("version", ["2.5.6", "2.7.0", "3.0.0"])
def test_outside_the_verified_lightning_range_a_fit_takes_lightnings_step_and_says_so(
    tiny_dm_factory, tmp_path, monkeypatch, caplog, version
):
    """A newer (or older) Lightning trains with mlplab's modules: the same weights as Lightning's own step, one info line."""
    import lightning

    reference, _ = train(tiny_dm_factory, tmp_path / "reference", 1, epochs=2)
    monkeypatch.setattr(lightning, "__version__", version)
    with caplog.at_level("INFO"):
        model, trainer = train(tiny_dm_factory, tmp_path / "other_release", 4, epochs=2)
    assert not model.grouped_steps and model.automatic_optimization and trainer.train_dataloader.group == 1
    assert trainer.global_step == 2 * 7
    line = (
        f"mlplab: Lightning's own step per batch (model.steps_per_call=4 not used): lightning {version} is outside the releases "
        "the speed path was verified on (>= 2.6, < 2.7"
    )
    assert line in caplog.text
    for (name, a), (_, b) in zip(reference.state_dict().items(), model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_mlplab_imports_no_private_lightning_loop_until_a_fit_takes_the_speed_path():
    """Importing the modules and the command must not depend on Lightning internals that a later release may move."""
    import subprocess
    import sys

    code = "import sys, mlplab.lit_mlp, mlplab.data, mlplab.cli.lightning_cli; print('mlplab.grouped.loop' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert result.stdout.strip() == "False"


def test_a_subclass_overriding_training_step_gets_lightnings_batches(tiny_dm_factory, tmp_path, caplog):
    class UnpacksItsBatch(LitMLP):
        def training_step(self, batch, batch_idx):
            x, y = batch  # a BatchGroup would not unpack
            return self.criterion(self(x), y)

    seed_everything(7)
    model = UnpacksItsBatch(hidden_dims=[8], steps_per_call=4)
    trainer = quiet_trainer(tmp_path, max_epochs=1, enable_checkpointing=False)
    with caplog.at_level("INFO"):
        trainer.fit(model, datamodule=tiny_dm_factory(batch_size=30))
    assert model.automatic_optimization and trainer.global_step == 7 and trainer.train_dataloader.group == 1
    assert "UnpacksItsBatch overrides training_step" in caplog.text
