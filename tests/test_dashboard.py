"""TensorBoard as a user meets it: a real server on a finished run's logs, its data API, and the page in headless Chromium."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REAL_DATA_DIR, ROOT
from tools.dashboard import CHROMIUM, get_json, hparams_session_groups, render_custom_scalars, render_time_series, tensorboard

MLPLAB = str(Path(sys.executable).parent / "mlplab")
PROMISED_SCALARS = {
    "train/loss",
    "train/acc",
    "train/grad_norm",
    "val/loss",
    "val/acc",
    "val/acc_best",
    "test/acc",
    "test/loss",
    "lr-Adam",
    "hp_metric",
}
RUN = "mnist/version_0"


@pytest.fixture(scope="module")
def server(real_mnist, tmp_path_factory):
    logs = tmp_path_factory.mktemp("dashboard") / "logs"
    command = [
        MLPLAB,
        "fit",
        "--config",
        "configs/mnist.yaml",
        "--trainer.max_epochs=2",
        "--trainer.limit_train_batches=40",
        "--trainer.limit_val_batches=5",
        "--trainer.log_every_n_steps=10",
        "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={logs}",
        f"--data.data_dir={REAL_DATA_DIR}",
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with tensorboard(logs) as url:
        yield url


def test_the_server_lists_the_run_with_its_scalars_on_optimizer_steps(server):
    assert get_json(server, "/data/runs") == [RUN]
    tags = get_json(server, "/data/plugin/scalars/tags")[RUN]
    assert set(tags) >= PROMISED_SCALARS, PROMISED_SCALARS - set(tags)
    # [wall_time, step, value] per point: 2 epochs x 40 optimizer steps, step metrics written every 10
    lr = get_json(server, f"/data/plugin/scalars/scalars?run={RUN}&tag=lr-Adam")
    assert [step for _, step, _ in lr] == [9, 19, 29, 39, 49, 59, 69, 79]
    steps = get_json(server, f"/data/plugin/scalars/scalars?run={RUN}&tag=train/optimizer_steps")
    assert [value for _, _, value in steps] == [40.0, 80.0]


def test_the_hparams_plugin_has_the_run_with_its_objective(server):
    (group,) = hparams_session_groups(server)
    assert group["name"] == RUN
    assert group["hparams"]["hidden_dims"] == "[512, 256]" and group["hparams"]["batch_size"] == 128.0
    (session,) = group["sessions"]
    metrics = {m["name"]["tag"]: m["value"] for m in session["metricValues"]}
    assert 0.5 < metrics["hp_metric"] <= 1.0  # the best val/acc, not the placeholder -1


def needs_chromium() -> None:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"CI=true but {CHROMIUM} is missing: .ci/run installs Debian's chromium")
        pytest.skip(f"no {CHROMIUM} (apt-get install chromium)")


def test_the_custom_scalars_layout_is_served(server):
    layout = get_json(server, "/data/plugin/custom_scalars/layout")
    [category] = layout["category"]
    charts = {chart["title"]: chart["multiline"]["tag"] for chart in category["chart"]}
    assert category["title"] == "mlplab: train against validation"
    assert charts == {"loss": ["^(train|val|test)/loss$"], "acc": ["^(train|val|test)/acc$"], "learning rate": ["^lr-"]}


def test_the_custom_scalars_page_draws_train_and_validation_on_one_chart(server, tmp_path):
    needs_chromium()
    screenshot = tmp_path / "custom_scalars.png"
    # lines of two points or more: train and validation (the test value is one point), and the learning rate
    expected = {"loss": 2, "acc": 2, "learning rate": 1}
    assert render_custom_scalars(server, screenshot=screenshot, expected=expected) == expected
    assert screenshot.stat().st_size > 20_000


def test_the_time_series_page_lists_the_run_and_draws_the_val_acc_card(server, tmp_path):
    needs_chromium()
    screenshot = tmp_path / "dashboard.png"
    seen = render_time_series(server, RUN, "val/acc", screenshot=screenshot)
    assert seen == {"run_listed": True, "card_rendered": True}
    assert screenshot.stat().st_size > 20_000  # a real page, not a blank one
