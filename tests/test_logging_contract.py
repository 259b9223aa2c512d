"""The contract of the speed path: what TensorBoard and the progress bar show does not depend on steps_per_call.

The same `mlplab fit` on real MNIST, with one batch per fetch and with the default 64, read back
with TensorBoard's EventAccumulator: the same tags, the same steps for each tag, the same values
(training is deterministic on the CPU), and the same progress-bar counts. This guards every later
change of the grouped loop.
"""

import re
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import fit_mnist_run, once_per_session, with_paths

PROGRESS = re.compile(r"Epoch (\d+):\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)")


def read_back(run: Path, stdout: str) -> tuple[EventAccumulator, dict[int, tuple[int, int]]]:
    """A run's TensorBoard events, and per epoch the highest count the training bar (on stdout) showed, with its total."""
    bars: dict[int, tuple[int, int]] = {}
    for epoch, n, total in PROGRESS.findall(stdout.replace("\r", "\n")):
        bars[int(epoch)] = max(bars.get(int(epoch), (0, 0)), (int(n), int(total)))
    events = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0, "histograms": 0})
    events.Reload()
    return events, bars


@pytest.fixture(scope="module")
def runs(mnist_run, tmp_path_factory):
    """The shared run (the default: 64 batches per fetch) and the same fit with one batch per fetch."""
    one = with_paths(
        once_per_session(tmp_path_factory, "mnist_run_one_step", lambda folder: fit_mnist_run(folder / "logs", "--model.steps_per_call=1"))
    )
    return read_back(one["run"], one["stdout"]), read_back(mnist_run["run"], mnist_run["stdout"])


def test_same_tags_steps_and_values_with_one_or_64_steps_per_call(runs):
    (one, _), (grouped, _) = runs
    for kind in ("scalars", "images", "histograms"):
        assert one.Tags()[kind] == grouped.Tags()[kind], kind
    for tag in one.Tags()["scalars"]:
        expected, seen = [(e.step, e.value) for e in one.Scalars(tag)], [(e.step, e.value) for e in grouped.Scalars(tag)]
        assert expected == seen, tag
    for tag in one.Tags()["images"]:
        assert [(e.step, e.encoded_image_string) for e in one.Images(tag)] == [
            (e.step, e.encoded_image_string) for e in grouped.Images(tag)
        ], tag
    for tag in one.Tags()["histograms"]:
        assert [(e.step, e.histogram_value) for e in one.Histograms(tag)] == [
            (e.step, e.histogram_value) for e in grouped.Histograms(tag)
        ], tag


def test_the_step_axis_counts_optimizer_steps(runs):
    (_, _), (grouped, _) = runs
    # 2 epochs x 100 batches: Lightning writes step metrics after batch b when (b + 1) % 10 == 0, at step b
    assert [e.step for e in grouped.Scalars("lr-Adam")] == list(range(9, 200, 10))
    assert [e.step for e in grouped.Scalars("train/grad_norm")] == list(range(9, 200, 10))
    # epoch-level metrics at the epoch's last batch; validation every 50 batches
    assert [e.step for e in grouped.Scalars("train/loss")] == [99, 199]
    assert [e.step for e in grouped.Scalars("val/acc")] == [49, 99, 149, 199]
    assert [e.value for e in grouped.Scalars("train/optimizer_steps")] == [100.0, 200.0]
    assert [e.step for e in grouped.Histograms("weights/net.output.weight")] == list(range(0, 200, 30))


def test_the_progress_bar_counts_batches(runs):
    (_, one_bars), (_, grouped_bars) = runs
    assert one_bars == grouped_bars == {0: (100, 100), 1: (100, 100)}
