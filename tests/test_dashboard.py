"""TensorBoard as a user meets it: a real server on a finished run's logs, its data API, and the page in headless Chromium."""

import os
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tools.dashboard import CHROMIUM, get_json, hparams_session_groups, render_custom_scalars, render_time_series, tensorboard

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
def server(mnist_run):
    with tensorboard(mnist_run["logs"]) as url:
        yield url


def test_the_server_lists_the_run_with_its_scalars_on_optimizer_steps(server):
    assert get_json(server, "/data/runs") == [RUN]
    tags = get_json(server, "/data/plugin/scalars/tags")[RUN]
    assert set(tags) >= PROMISED_SCALARS, PROMISED_SCALARS - set(tags)
    # [wall_time, step, value] per point: 2 epochs x 100 optimizer steps, step metrics written every 10
    lr = get_json(server, f"/data/plugin/scalars/scalars?run={RUN}&tag=lr-Adam")
    assert [step for _, step, _ in lr] == list(range(9, 200, 10))
    steps = get_json(server, f"/data/plugin/scalars/scalars?run={RUN}&tag=train/optimizer_steps")
    assert [value for _, _, value in steps] == [100.0, 200.0]


def test_the_hparams_plugin_has_the_run_with_its_objective(server):
    (group,) = hparams_session_groups(server)
    assert group["name"] == RUN
    assert group["hparams"]["hidden_dims"] == "[512, 256]" and group["hparams"]["batch_size"] == 128.0
    (session,) = group["sessions"]
    metrics = {m["name"]["tag"]: m["value"] for m in session["metricValues"]}
    val_acc = get_json(server, f"/data/plugin/scalars/scalars?run={RUN}&tag=val/acc")
    assert metrics["hp_metric"] == pytest.approx(max(value for _, _, value in val_acc))  # the best val/acc, not the placeholder -1


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


def test_the_time_series_page_shows_the_runs_last_val_acc(server, mnist_run, tmp_path):
    needs_chromium()
    screenshot = tmp_path / "dashboard.png"
    shown = render_time_series(server, RUN, "val/acc", screenshot=screenshot)
    last = EventAccumulator(str(mnist_run["run"])).Reload().Scalars("val/acc")[-1]
    # the card's data table: the run's last point (TensorBoard rounds the value to 4 digits, writes the step as 5,589)
    assert shown["Run"] == RUN and int(shown["Step"].replace(",", "")) == last.step
    assert float(shown["Value"]) == pytest.approx(last.value, abs=5e-5)
    assert screenshot.stat().st_size > 20_000  # a real page, not a blank one
