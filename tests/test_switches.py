"""Every training switch of the seed documents, each shown to have its effect with a real Trainer."""

import csv
import functools
import math

import pytest
import torch
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from mlplab import LitMLP
from mlplab.data import BatchAugment, LinearRegressionDataModule, MultiLabelMNISTDataModule, NoisyLineDataModule
from mlplab.errors import ConfigError, TrainingDivergedError
from mlplab.schedules import WarmupCosineLR
from tests.conftest import make_tiny_idx, quiet_trainer


def fit(model, dm, tmp_path, epochs=1, **trainer_kwargs):
    trainer = quiet_trainer(tmp_path, **{"max_epochs": epochs, "enable_checkpointing": False, **trainer_kwargs})
    trainer.fit(model, datamodule=dm)
    return trainer


def logged(tmp_path, key):
    """(step, value) rows of ``key`` from a CSVLogger run."""
    (path,) = tmp_path.rglob("metrics.csv")
    with path.open() as handle:
        return [(int(row["step"]), float(row[key])) for row in csv.DictReader(handle) if row.get(key)]


# ---------------------------------------------------------------- model switches through LitMLP


@pytest.mark.parametrize(
    "switches",
    [
        {"activation": "maxout", "maxout_pieces": 3, "batch_norm": True},
        {"residual": True, "hidden_dims": [32, 32, 16]},
        {"activation": "gelu", "dropout": 0.3},
        {"activation": "sigmoid", "init": "xavier_normal"},
        {"hidden_dims": []},
    ],
)
def test_model_switches_train(tiny_dm_factory, tmp_path, switches):
    seed_everything(0)
    model = LitMLP(**{"hidden_dims": [32], "optimizer": functools.partial(torch.optim.Adam, lr=3e-3), **switches})
    dm = tiny_dm_factory()
    trainer = quiet_trainer(tmp_path, inference_mode=False)  # (no inference tensors: the same DataModule trains next)
    untrained = trainer.validate(model, datamodule=dm, verbose=False)[0]["val/loss"]
    trainer = fit(model, dm, tmp_path, epochs=4)
    trained = trainer.callback_metrics["val/loss"].item()
    assert math.isfinite(trained) and trained < 0.5 * untrained, (untrained, trained)  # it learns, not only stays finite


# ---------------------------------------------------------------- regularisation


def _fraction_near_zero(model):
    weights = torch.cat([p.detach().flatten() for p in model.net.parameters() if p.ndim > 1])
    return (weights.abs() < 1e-3).float().mean().item()


def test_l1_drives_more_weights_to_zero_and_is_logged(tiny_dm_factory, tmp_path):
    sgd = functools.partial(torch.optim.SGD, lr=0.05)
    torch.manual_seed(0)
    plain = LitMLP(hidden_dims=[32], optimizer=sgd)
    torch.manual_seed(0)
    lasso = LitMLP(hidden_dims=[32], optimizer=sgd, l1=1e-3)
    fit(plain, tiny_dm_factory(), tmp_path / "a", epochs=15)
    trainer = fit(lasso, tiny_dm_factory(), tmp_path / "b", epochs=15)
    assert _fraction_near_zero(lasso) > 5 * max(_fraction_near_zero(plain), 0.01)
    l1_now = 1e-3 * sum(p.abs().sum() for p in lasso.net.parameters() if p.ndim > 1)
    assert trainer.callback_metrics["train/l1"].item() == pytest.approx(l1_now.item(), rel=0.2)
    assert "train/l2" not in trainer.callback_metrics


def test_l2_penalty_shrinks_weights(tiny_dm_factory, tmp_path):
    sgd = functools.partial(torch.optim.SGD, lr=0.05)
    torch.manual_seed(0)
    plain = LitMLP(hidden_dims=[32], optimizer=sgd)
    torch.manual_seed(0)
    ridge = LitMLP(hidden_dims=[32], optimizer=sgd, l2=0.1)
    fit(plain, tiny_dm_factory(), tmp_path / "a", epochs=10)
    trainer = fit(ridge, tiny_dm_factory(), tmp_path / "b", epochs=10)
    norm = lambda m: sum(p.pow(2).sum() for p in m.net.parameters() if p.ndim > 1).item()  # noqa: E731
    assert norm(ridge) < 0.8 * norm(plain)
    assert trainer.callback_metrics["train/l2"].item() > 0


def test_weight_decay_can_spare_biases_and_norm_layers(tiny_dm_factory, tmp_path):
    model = LitMLP(
        hidden_dims=[16], batch_norm=True, decay_bias_and_norm=False, optimizer=functools.partial(torch.optim.AdamW, weight_decay=0.5)
    )
    optimizer = model.configure_optimizers()
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.5 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    # pure decay (zero learning signal): weights shrink, biases stay
    with_grads = LitMLP(hidden_dims=[16], decay_bias_and_norm=False, optimizer=functools.partial(torch.optim.SGD, lr=0.1, weight_decay=0.5))
    opt = with_grads.configure_optimizers()
    bias_before, weight_before = with_grads.net.output.bias.clone(), with_grads.net.output.weight.clone()
    for p in with_grads.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.equal(with_grads.net.output.bias, bias_before)
    assert torch.allclose(with_grads.net.output.weight, weight_before * (1 - 0.1 * 0.5))


# ---------------------------------------------------------------- optimizers

OPTIMIZERS = {
    "SGD": {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "weight_decay": 1e-4},
    "SGD-nesterov": {"lr": 0.1, "momentum": 0.9, "nesterov": True},
    "Adagrad": {"lr": 0.05},
    "RMSprop": {"lr": 1e-3},
    "Adadelta": {"lr": 1.0},
    "Adam": {"lr": 1e-3, "amsgrad": True},
    "Adamax": {"lr": 2e-3},
    "AdamW": {"lr": 1e-3, "weight_decay": 0.01},
    "ASGD": {"lr": 0.1},
    "Rprop": {"lr": 1e-3},
    "NAdam": {"lr": 2e-3},
    "RAdam": {"lr": 2e-2},  # (its rectified first steps are short: at 1e-2 three epochs end at 0.62-0.68 of the loss)
    "LBFGS": {"lr": 0.5, "max_iter": 5},
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_of_seed_001_lowers_the_loss(tiny_dm_factory, tmp_path, name):
    cls = getattr(torch.optim, name.split("-")[0])
    torch.manual_seed(0)  # the initial weights, whatever tests ran before in this process
    dm = tiny_dm_factory(batch_size=50)
    model = LitMLP(hidden_dims=[32], optimizer=functools.partial(cls, **OPTIMIZERS[name]))
    dm.setup()
    x, y = dm.splits["train"]
    model.preprocessor.load_state_dict(dm.preprocessor.state_dict())
    before = torch.nn.functional.cross_entropy(model(x), y).item()
    fit(model, dm, tmp_path, epochs=3)
    after = torch.nn.functional.cross_entropy(model(x), y).item()
    assert after < 0.7 * before, (before, after)


def test_lbfgs_evaluates_the_closure_several_times_per_step(tiny_dm_factory, tmp_path):
    model = LitMLP(hidden_dims=[16], optimizer=functools.partial(torch.optim.LBFGS, lr=0.5, max_iter=5))
    trainer = fit(model, tiny_dm_factory(batch_size=50), tmp_path, epochs=1)
    state = next(iter(trainer.optimizers[0].state.values()))
    assert trainer.global_step == 4 and state["func_evals"] > trainer.global_step


def test_sparse_adam_is_rejected_with_the_reason():
    with pytest.raises(ConfigError, match=r"SparseAdam is not allowed for an MLP: SparseAdam only accepts sparse gradients"):
        LitMLP(optimizer=torch.optim.SparseAdam)


# ---------------------------------------------------------------- schedules: the logged lr follows the formula


def _lr_run(tiny_dm_factory, tmp_path, scheduler, epochs, interval="epoch", batch_size=40, **model_kwargs):
    model = LitMLP(hidden_dims=[8], optimizer=functools.partial(torch.optim.SGD, lr=0.1), lr_scheduler=scheduler, **model_kwargs)
    logger = CSVLogger(tmp_path, name="lr")
    fit(
        model,
        tiny_dm_factory(batch_size=batch_size),
        tmp_path,
        epochs=epochs,
        logger=logger,
        callbacks=[LearningRateMonitor(logging_interval=interval)],
        log_every_n_steps=1,
    )
    return logged(tmp_path, "lr-SGD"), model


@pytest.mark.parametrize(
    ("scheduler", "formula"),
    [
        (functools.partial(torch.optim.lr_scheduler.StepLR, step_size=5, gamma=0.1), lambda e: 0.1 * 0.1 ** (e // 5)),
        (
            functools.partial(torch.optim.lr_scheduler.MultiStepLR, milestones=[2, 7], gamma=0.5),
            lambda e: 0.1 * 0.5 ** ((e >= 2) + (e >= 7)),
        ),
        (functools.partial(torch.optim.lr_scheduler.ExponentialLR, gamma=0.8), lambda e: 0.1 * 0.8**e),
        (functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=12), lambda e: 0.05 * (1 + math.cos(math.pi * e / 12))),
    ],
)
def test_epoch_schedules_follow_their_formula(tiny_dm_factory, tmp_path, scheduler, formula):
    rows, _ = _lr_run(tiny_dm_factory, tmp_path, scheduler, epochs=12)
    steps_per_epoch = 5  # 200 training samples / batch 40
    assert len(rows) == 12
    for step, lr in rows:
        assert lr == pytest.approx(formula(step // steps_per_epoch), rel=1e-6, abs=1e-12)


def test_one_cycle_takes_total_steps_from_the_trainer(tiny_dm_factory, tmp_path):
    rows, model = _lr_run(
        tiny_dm_factory, tmp_path, functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=1.0), epochs=4, interval="step"
    )
    scheduler = model.trainer.lr_scheduler_configs[0]
    assert scheduler.interval == "step" and scheduler.scheduler.total_steps == 20
    lrs = [lr for _, lr in rows]
    assert len(lrs) == 20 and lrs[0] == pytest.approx(1.0 / 25)  # max_lr / div_factor
    assert max(lrs) == pytest.approx(1.0, rel=0.05) and lrs.index(max(lrs)) in (5, 6)  # peak at pct_start=0.3
    assert lrs[-1] < 1e-3


def test_warmup_cosine_follows_its_formula_per_step(tiny_dm_factory, tmp_path):
    rows, model = _lr_run(tiny_dm_factory, tmp_path, functools.partial(WarmupCosineLR, warmup_steps=5), epochs=4, interval="step")
    total = 20
    assert model.trainer.lr_scheduler_configs[0].scheduler.total_steps == total
    for step, lr in rows:
        factor = (step + 1) / 5 if step < 5 else 0.5 * (1 + math.cos(math.pi * (step - 5) / (total - 5)))
        assert lr == pytest.approx(0.1 * factor, rel=1e-6, abs=1e-12)


def test_plateau_without_a_validation_value_at_epoch_end_is_a_config_error(tiny_dm_factory, tmp_path):
    # several steps per call (manual optimization: this module steps the scheduler); no validation batches at all
    model = LitMLP(hidden_dims=[8], steps_per_call=4, lr_scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau)
    with pytest.raises(
        ConfigError, match=r"model.lr_scheduler_monitor='val/loss' has no value at the end of epoch 0, when ReduceLROnPlateau steps"
    ):
        fit(model, tiny_dm_factory(batch_size=40), tmp_path, limit_val_batches=0)


def test_warmup_longer_than_the_fit_is_a_config_error(tiny_dm_factory, tmp_path):
    with pytest.raises(ConfigError, match=r"warmup_steps=30 is not allowed; it must be in \[0, total_steps=20\)"):
        _lr_run(tiny_dm_factory, tmp_path, functools.partial(WarmupCosineLR, warmup_steps=30), epochs=4, interval="step")


# ---------------------------------------------------------------- gradient clipping and the logged gradient norm


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_gradient_clipping_bounds_each_update(tiny_dm_factory, tmp_path, algorithm):
    model = LitMLP(hidden_dims=[16], optimizer=functools.partial(torch.optim.SGD, lr=1.0))
    dm = tiny_dm_factory(batch_size=200)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = fit(model, dm, tmp_path, max_steps=1, gradient_clip_val=1e-3, gradient_clip_algorithm=algorithm, log_every_n_steps=1)
    deltas = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before, strict=True)])
    if algorithm == "norm":
        assert deltas.norm().item() == pytest.approx(1e-3, rel=1e-3)
    else:
        assert deltas.abs().max().item() == pytest.approx(1e-3, rel=1e-4)
    assert trainer.callback_metrics["train/grad_norm"].item() > 1e-2  # the norm before clipping


# ---------------------------------------------------------------- update schemes (seed 004)


@pytest.mark.parametrize(("batch_size", "steps_per_epoch"), [(None, 1), (1, 100), (20, 5)])
def test_batch_online_and_minibatch_update_counts(tmp_path, batch_size, steps_per_epoch):
    model = LitMLP(input_dim=1, num_classes=1, hidden_dims=[], task="regression", optimizer=functools.partial(torch.optim.SGD, lr=0.01))
    trainer = fit(model, LinearRegressionDataModule(batch_size=batch_size), tmp_path, epochs=3)
    assert trainer.callback_metrics["train/optimizer_steps_per_epoch"].item() == steps_per_epoch
    assert trainer.callback_metrics["train/optimizer_steps"].item() == 3 * steps_per_epoch


def test_batch_size_larger_than_training_split_is_rejected():
    with pytest.raises(ConfigError, match=r"data.batch_size=101 is larger than the 100 training samples"):
        LinearRegressionDataModule(batch_size=101).setup()


# ---------------------------------------------------------------- tasks


def test_regression_recovers_seed_004_line(tmp_path):
    model = LitMLP(input_dim=1, num_classes=1, hidden_dims=[], task="regression", optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    trainer = fit(model, LinearRegressionDataModule(batch_size=20), tmp_path, epochs=60)
    assert model.net.output.weight.item() == pytest.approx(2.0, abs=0.25)
    assert model.net.output.bias.item() == pytest.approx(3.0, abs=0.3)
    for key in ("val/mse", "val/mae", "val/r2", "val/mse_best"):
        assert key in trainer.callback_metrics
    assert trainer.callback_metrics["val/mse"].item() < 0.4  # noise variance 0.25


def test_dropout_changes_the_fit_of_the_noisy_line(tmp_path):
    seed_everything(0)  # the weights' initialisation, not whatever the tests before this one left in the generator
    adam = functools.partial(torch.optim.Adam, lr=0.01)
    plain = LitMLP(input_dim=1, num_classes=1, hidden_dims=[200, 200], task="regression", optimizer=adam)
    dropout = LitMLP(input_dim=1, num_classes=1, hidden_dims=[200, 200], dropout=0.5, task="regression", optimizer=adam)
    for model, folder in ((plain, "a"), (dropout, "b")):  # (measured on the training points: no validation needed)
        fit(model, NoisyLineDataModule(), tmp_path / folder, epochs=300, limit_val_batches=0)
    x, y = NoisyLineDataModule().build_splits()["train"]
    train_mse = {name: torch.nn.functional.mse_loss(m.eval()(x), y).item() for name, m in (("plain", plain), ("dropout", dropout))}
    # the unregularised net fits the training noise (variance 0.09) harder: 0.013 against 0.055 at seed 0
    assert train_mse["plain"] < 0.03 and train_mse["dropout"] > 2 * train_mse["plain"], train_mse


def test_multilabel_overlaid_digits(tmp_path):
    source = make_tiny_idx(tmp_path / "Tiny" / "raw", n_train=400, n_test=100)
    dm = type("TinyMultiLabel", (MultiLabelMNISTDataModule,), {"source": source})(data_dir=str(tmp_path), val_size=50, batch_size=25)
    dm.setup()
    x, y = dm.splits["train"]
    assert y.shape == (350, 10) and set(y.sum(1).tolist()) <= {1.0, 2.0} and (y.sum(1) == 2).any()
    model = LitMLP(hidden_dims=[64], task="multilabel")
    trainer = fit(model, dm, tmp_path, epochs=10)
    # predicting "no digit" everywhere scores 1 - (label density) (about 0.81): the model must close most of the gap to 1
    all_zeros = 1 - float(dm.splits["val"][1].mean())
    metrics = {key: float(trainer.callback_metrics[key]) for key in ("val/acc", "val/f1")}
    assert metrics["val/acc"] > all_zeros + 0.75 * (1 - all_zeros) and metrics["val/f1"] > 0.8, (metrics, all_zeros)
    probabilities = model.predict_step((x[:4], y[:4]), 0)
    assert probabilities.shape == (4, 10) and ((probabilities >= 0) & (probabilities <= 1)).all()


def test_task_must_fit_the_data(tiny_dm_factory, tmp_path):
    with pytest.raises(ConfigError, match=r"model.task='regression' does not fit TinyDataModule, a 'multiclass' data set"):
        fit(LitMLP(task="regression"), tiny_dm_factory(), tmp_path)


# ---------------------------------------------------------------- augmentation


def test_augmentation_changes_training_batches_only(tiny_dm_factory, tmp_path):
    dm = tiny_dm_factory(augment_translate=0.2, augment_rotate=15)
    dm.setup()
    batch = (dm.splits["train"][0][:8], dm.splits["train"][1][:8])
    assert dm.on_after_batch_transfer(batch, 0) is batch  # no trainer: not training
    seen = {}

    class Spy(LitMLP):
        def training_step(self, batch, batch_idx):
            seen.setdefault("train", batch[0])
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch, batch_idx):
            seen.setdefault("val", batch[0])
            return super().validation_step(batch, batch_idx)

    fit(Spy(hidden_dims=[8]), dm, tmp_path, max_steps=1, num_sanity_val_steps=0, limit_val_batches=1, val_check_interval=1)
    assert torch.equal(seen["val"], dm.splits["val"][0][: len(seen["val"])])
    first_train = dm.train_dataloader()
    assert not any(torch.equal(seen["train"], x) for x, _ in first_train)


@pytest.mark.parametrize("steps_per_call", [1, 4])
def test_augment_epochs_augments_only_the_first_epochs(tiny_dm_factory, tmp_path, steps_per_call):
    dm = tiny_dm_factory(augment_elastic=8.0, augment_epochs=2)
    augmented_in_epoch = []
    dm.augment.register_forward_hook(lambda module, args, output: augmented_in_epoch.append(dm.trainer.current_epoch))
    trainer = fit(LitMLP(hidden_dims=[8], steps_per_call=steps_per_call), dm, tmp_path, epochs=4, num_sanity_val_steps=0)
    batches_per_epoch = trainer.global_step // 4
    assert batches_per_epoch > 1
    assert augmented_in_epoch == [0] * batches_per_epoch + [1] * batches_per_epoch


def test_bad_augment_epochs_names_value_and_what_is_allowed(tiny_dm_factory):
    with pytest.raises(ConfigError, match=r"data.augment_epochs=-1 is not allowed; it is a number of epochs >= 0"):
        tiny_dm_factory(augment_elastic=8.0, augment_epochs=-1)
    with pytest.raises(ConfigError, match=r"data.augment_epochs=5 has no effect without augmentation"):
        tiny_dm_factory(augment_epochs=5)


def test_translation_moves_the_image_and_flip_mirrors_it():
    image = torch.zeros(1, 1, 28, 28)
    image[..., 10:18, 4:8] = 1.0
    torch.manual_seed(0)
    shifted = BatchAugment(translate=0.25)(image.repeat(64, 1, 1, 1))
    columns = torch.arange(28.0)
    centre = (shifted.sum(2).squeeze(1) * columns).sum(1) / shifted.sum((1, 2, 3))
    assert centre.std() > 1.0 and shifted.sum((1, 2, 3)).min() > 0
    flipped = BatchAugment(hflip=True)(image.repeat(64, 1, 1, 1))
    mirrored = flipped[:, 0, 10, 20:24].sum(1) == 4
    assert 10 < mirrored.sum() < 54 and torch.equal(flipped[mirrored][0], image[0].flip(-1))


def test_erasing_blanks_one_rectangle_of_torchvision_size_in_a_fraction_of_images():
    torch.manual_seed(0)
    images = torch.rand(2000, 1, 28, 28) + 0.5  # no pixel is 0 before erasing
    out = BatchAugment(erase=0.5)(images)
    erased = out == 0
    touched = erased.flatten(1).any(1)
    assert 900 < touched.sum() < 1100
    assert torch.equal(out[~erased], images[~erased])  # nothing but the rectangles changes
    boxes = erased[touched, 0]
    rows, columns = boxes.any(2), boxes.any(1)
    # each erased region is exactly the rectangle spanned by its rows and columns
    assert torch.equal(boxes, rows.unsqueeze(2) & columns.unsqueeze(1))
    area = boxes.flatten(1).float().mean(1)
    assert area.min() >= 0.015 and area.max() <= 0.5 and 0.12 < area.mean() < 0.22  # drawn from 2-33 % of the image
    assert (rows.sum(1).float() / columns.sum(1)).max() > 2 and (rows.sum(1).float() / columns.sum(1)).min() < 0.5
    assert torch.equal(BatchAugment(erase=1.0)(images).eq(0).flatten(1).any(1), torch.ones(2000, dtype=torch.bool))


def test_elastic_distortion_displaces_each_image_by_its_own_smooth_field_of_strength_alpha():
    # images whose two channels hold each pixel's column and row index: after the warp, a pixel's
    # value minus its index is the displacement the field applied there (bilinear resampling is
    # exact on a linear ramp); the centre is far enough from the border to see no padding
    rows, columns = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    ramps = torch.stack([columns, rows]).expand(500, 2, 28, 28)
    torch.manual_seed(0)

    def displacement(alpha: float, sigma: float) -> torch.Tensor:
        return (BatchAugment(elastic=alpha, elastic_sigma=sigma)(ramps) - ramps)[..., 9:19, 9:19]

    field = displacement(34.0, 4.0)
    # smoothed uniform(-1, 1) noise: std sqrt(1/3) * sum(g^2) = 0.0407 for sigma 4, times alpha = 1.38 px
    assert 1.2 < field.std() < 1.6 and field.mean().abs() < 0.1
    assert 1.2 < displacement(17.0, 4.0).std() * 2 < 1.6  # proportional to alpha
    assert (field[:1] - field[1:]).abs().mean() > 0.8  # each image has its own field

    def roughness(d: torch.Tensor) -> float:  # neighbour differences relative to the displacement
        return ((d[..., 1:] - d[..., :-1]).std() / d.std()).item()

    assert roughness(field) < 0.3 and roughness(displacement(10.0, 1.0)) > 0.5
    assert not BatchAugment(elastic=0.0).active


def test_label_smoothing_mixes_cross_entropy_with_the_uniform_target_and_needs_multiclass():
    torch.manual_seed(0)
    x, y = torch.randn(32, 784), torch.randint(0, 10, (32,))
    model = LitMLP(hidden_dims=[16], label_smoothing=0.2)
    log_probs = model(x).log_softmax(1)
    expected = 0.8 * -log_probs.gather(1, y.unsqueeze(1)).mean() + 0.2 * -log_probs.mean()
    torch.testing.assert_close(model.training_loss((x, y)), expected)
    with pytest.raises(ConfigError, match=r"model.label_smoothing=0.1 is not allowed with model.task='regression'"):
        LitMLP(task="regression", label_smoothing=0.1)
    with pytest.raises(ConfigError, match=r"model.label_smoothing=1.0 is not allowed .* must be in \[0, 1\)"):
        LitMLP(label_smoothing=1.0)


@pytest.mark.parametrize("steps_per_call", [1, 4])
def test_divergence_stops_training_and_keeps_good_checkpoints(tiny_dm_factory, tmp_path, steps_per_call):
    # lr x 1e12 from epoch 2 on: epochs 0 and 1 train normally and are checkpointed, epoch 2 blows up
    model = LitMLP(
        hidden_dims=[16],
        steps_per_call=steps_per_call,
        optimizer=functools.partial(torch.optim.SGD, lr=0.1),
        lr_scheduler=functools.partial(torch.optim.lr_scheduler.MultiStepLR, milestones=[2], gamma=1e12),
    )
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/acc", mode="max", save_last=True)
    trainer = quiet_trainer(tmp_path, max_epochs=5, callbacks=[checkpoint])
    # (5 steps per epoch: epoch 2 is steps 10-14; the grouped path names the same step as Lightning's own)
    with pytest.raises(
        TrainingDivergedError, match=r"training diverged: the loss became nan at optimizer step 13 \(epoch 2\), with learning rate 1e\+11\."
    ):
        trainer.fit(model, datamodule=tiny_dm_factory(batch_size=40))
    for path in (checkpoint.best_model_path, tmp_path / "ckpt" / "last.ckpt"):
        state = torch.load(path, weights_only=True)
        assert state["epoch"] <= 1
        assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
