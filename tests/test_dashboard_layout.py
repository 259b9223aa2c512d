"""The Custom Scalars layout follows the task and the metrics actually logged; read back from the event file."""

from __future__ import annotations

from lightning.pytorch.loggers import TensorBoardLogger

from mlplab import LitMLP
from mlplab.dashboard import CATEGORY, CustomScalarsLayout
from mlplab.data import NoisyLineDataModule
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
