"""The Custom Scalars layout follows the task and the metrics actually logged; read back from the event file."""

from __future__ import annotations

import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mlplab import LitMLP
from mlplab.dashboard import CATEGORY, CustomScalarsLayout, RegressionFitFigure
from mlplab.data import LinearRegressionDataModule, NoisyLineDataModule, SyntheticRegressionDataModule
from tests.conftest import quiet_trainer
from tests.test_e2e import custom_scalars_layout


def fit_with_layout(tmp_path, model, datamodule, d2l_chart=False):
    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    trainer = quiet_trainer(tmp_path, logger=logger, max_epochs=1, callbacks=[CustomScalarsLayout(d2l_chart=d2l_chart)])
    trainer.fit(model, datamodule=datamodule)
    logger.experiment.flush()
    return custom_scalars_layout(tmp_path / "run" / "version_0")


def test_classification_layout_with_the_d2l_chart(tiny_dm_factory, tmp_path):
    layout = fit_with_layout(tmp_path, LitMLP(hidden_dims=[8], steps_per_call=4), tiny_dm_factory(batch_size=30), d2l_chart=True)
    assert layout[CATEGORY] == {"loss": ["^(train|val|test)/loss$"], "acc": ["^(train|val|test)/acc$"], "learning rate": ["^lr-"]}
    assert layout["d2l train_ch3"] == {"train loss, train acc, validation and test acc": ["^train/(loss|acc)$", "^(val|test)/acc$"]}


def test_regression_layout_has_its_own_metrics(tmp_path):
    model = LitMLP(input_dim=1, num_classes=1, hidden_dims=[4], task="regression")
    layout = fit_with_layout(tmp_path, model, NoisyLineDataModule())
    assert list(layout) == [CATEGORY]
    assert list(layout[CATEGORY]) == ["loss", "mae", "mse", "r2", "learning rate"]


def test_regression_fit_figure_and_the_line_against_the_true_one(tmp_path):
    # seed 004's linear model on y = 3 + 2x: the figure every 2 epochs and at the end, w and b beside the true line
    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    model = LitMLP(input_dim=1, num_classes=1, hidden_dims=[], task="regression", steps_per_call=4)
    callbacks = [CustomScalarsLayout(), RegressionFitFigure(every_n_epochs=2)]
    trainer = quiet_trainer(tmp_path, logger=logger, max_epochs=5, log_every_n_steps=5, callbacks=callbacks)
    trainer.fit(model, datamodule=LinearRegressionDataModule(batch_size=20))
    logger.experiment.flush()
    assert not model.automatic_optimization  # the figure callbacks keep the speed path
    events = EventAccumulator(str(tmp_path / "run" / "version_0"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert [event.step for event in events.Images("regression/fit")] == [10, 20, 25]  # epochs 2, 4 and the last (5 steps each)
    w, w_true = events.Scalars("regression/w"), events.Scalars("regression/w_true")
    assert [e.step for e in w] == [e.step for e in w_true] == [5, 10, 15, 20, 25] and {e.value for e in w_true} == {2.0}
    assert events.Scalars("regression/b_true")[0].value == 3.0
    layout = custom_scalars_layout(tmp_path / "run" / "version_0")
    assert layout[CATEGORY]["w and b against the true line"] == ["^regression/(w|b)(_true)?$"]


class ThreeInputs(SyntheticRegressionDataModule):
    """y = x1 + 2 x2 - x3 + noise: a regression on more than one input."""

    input_shape = (3,)
    default_num_samples = 120
    default_noise = 0.1

    def sample(self, n, seed):
        x = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed))
        return x, (x @ torch.tensor([[1.0], [2.0], [-1.0]])) + self.hparams.noise * torch.randn(n, 1)


def test_more_inputs_get_a_predicted_against_true_scatter_at_test_time(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    model = LitMLP(input_dim=3, num_classes=1, hidden_dims=[8], task="regression")
    trainer = quiet_trainer(tmp_path, logger=logger, max_epochs=2, callbacks=[RegressionFitFigure(every_n_epochs=1)])
    datamodule = ThreeInputs(batch_size=40)
    trainer.fit(model, datamodule=datamodule)
    trainer.test(model, datamodule=datamodule, verbose=False)
    logger.experiment.flush()
    events = EventAccumulator(str(tmp_path / "run" / "version_0"), size_guidance={"images": 0})
    events.Reload()
    assert events.Tags()["images"] == ["regression/predicted_vs_true"]  # no 1-D fit figure for three inputs
    assert [event.step for event in events.Images("regression/predicted_vs_true")] == [trainer.global_step]
