"""`mlplab compare`: real comparisons of real `mlplab fit` runs on tiny data; the statistics against SciPy and numpy.

The refusals run in-process (nothing is started before they are refused); the comparisons are processes.
"""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from scipy import stats
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mlplab.tune.aggregate import CATEGORY, read_scalars
from mlplab.tune.statistics import summarize, welch

from .test_faults import error_paragraph, mlplab_in_process, prepare_workdir, tiny_args


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """Tiny data and its DataModule module (tests/test_faults.py's work folder)."""
    return prepare_workdir(tmp_path)


VARIANTS = "narrow: {model.hidden_dims: [8]}\nwide: {model.hidden_dims: [32]}\n"


def compare_args(study: str, *extra: str, seeds: str = "2", variants: str = "variants.yaml") -> list[str]:
    # (tiny_args' `--model.hidden_dims=[16]` is the base; each variant changes it)
    return ["compare", "--variants", variants, "--seeds", seeds, "--study", study, *extra, *tiny_args(2)]


def run_compare(folder: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "mlplab", *args], cwd=folder, env=env, capture_output=True, text=True, timeout=timeout)


def run_rows(folder: Path) -> list[dict[str, str]]:
    return [row for row in csv.DictReader((folder / "results.csv").open()) if row["row"] == "run"]


# ---------------------------------------------------------------- refused before any run


@pytest.mark.parametrize(
    ("variants", "extra", "expected"),
    [
        ("narrow: {model.hiden_dims: [8]}\n", [], ["variant 'narrow' is refused by the config", "model.hiden_dims", "model.hidden_dims"]),
        ("bad: {model.dropout: 1.5}\n", [], ["variant 'bad' is refused by the config", "model.dropout=1.5"]),
        ("a: {model.dropout: 0.1}\na: {model.dropout: 0.2}\n", [], ["the key 'a' appears twice (lines 1 and 2)", "variants.yaml"]),
        ("a: {seed_everything: 3}\n", [], ["variant 'a'", "seed_everything sets the seed", "--seeds"]),
        ("a: {data.seed: 3}\n", [], ["variant 'a'", "data.seed sets the seed"]),
        ("a: {config: seeded.yaml}\n", [], ["variant 'a'", "its config 'seeded.yaml' sets seed_everything"]),
        ("", [], ["names no variant", "sgd: {model.optimizer: SGD}"]),
        ("a: {model.dropout: 0.1}\n", ["--seeds", "0"], ["--seeds 0 is not allowed", "N >= 1"]),
        ("a: {model.dropout: 0.1}\n", ["--seeds", "1,1"], ["--seeds 1,1 is not allowed", "distinct"]),
        ("a/b: {model.dropout: 0.1}\n", [], ["variant 'a/b'", "folder of its runs"]),
    ],
)
def test_bad_input_is_refused_before_any_run_in_one_paragraph(workdir, monkeypatch, capsys, variants, extra, expected):
    (workdir / "variants.yaml").write_text(variants)
    (workdir / "seeded.yaml").write_text("seed_everything: 7\n")
    args = compare_args("refused", "--launch", "process", *extra)
    result = mlplab_in_process(workdir, monkeypatch, capsys, *args)
    message = error_paragraph(result)
    for fragment in expected:
        assert fragment in message, message
    assert not (workdir / "logs").exists()  # nothing left behind: no study, no run folder


def test_the_statistics_are_scipys():
    a, b = [0.91, 0.93, 0.92, 0.95], [0.90, 0.88, 0.915]
    summary = summarize(a)
    assert summary.mean == pytest.approx(np.mean(a)) and summary.sd == pytest.approx(np.std(a, ddof=1))
    assert (summary.low, summary.high) == pytest.approx(stats.t.interval(0.95, 3, loc=np.mean(a), scale=stats.sem(a)))
    difference = welch(a, b)
    reference = stats.ttest_ind(a, b, equal_var=False)
    assert difference.p == pytest.approx(reference.pvalue) and difference.difference == pytest.approx(np.mean(a) - np.mean(b))
    assert (difference.low, difference.high) == pytest.approx(tuple(reference.confidence_interval(0.95)))
    assert math.isnan(summarize([0.9]).sd) and math.isnan(welch([0.9], b).p)


# ---------------------------------------------------------------- real comparisons


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> Path:
    """One comparison of two variants x two seeds, one at a time, on tiny data; its folder.

    (With --workers 2 this fixture failed once in a full `make test`: a run was found finished by Optuna while
    its process still ran, UpdateFinishedTrialError; not yet explained, see the issue's note.)
    """
    folder = prepare_workdir(tmp_path_factory.mktemp("compare"))
    (folder / "variants.yaml").write_text(VARIANTS)
    # (test/loss: tiny data's test accuracies are few distinct values, often equal)
    result = run_compare(folder, *compare_args("tiny", "--metric", "test/loss"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "is " in result.stdout and "% of its runs' fit time" in result.stdout, result.stdout[-2000:]
    return folder / "logs" / "compare" / "tiny"


def test_each_variant_and_seed_is_one_run_and_the_tables_are_recomputable_from_its_rows(compared):
    rows = run_rows(compared)
    assert sorted((row["variant"], row["seed"]) for row in rows) == [("narrow", "1"), ("narrow", "2"), ("wide", "1"), ("wide", "2")]
    for row in rows:
        assert Path(row["run"]).name == f"seed_{row['seed']}" and list((compared.parents[2] / row["run"]).glob("events.out.tfevents.*"))
    # different seeds, different runs (initial weights, split, shuffle: the training losses differ at every step)
    for variant in ("narrow", "wide"):
        losses = [read_scalars(compared / variant / f"seed_{seed}")["train/loss"] for seed in (1, 2)]
        assert losses[0].keys() == losses[1].keys() and all(losses[0][step] != losses[1][step] for step in losses[0])
    variants = {row["variant"]: row for row in csv.DictReader((compared / "results.csv").open()) if row["row"] == "variant"}
    values = {name: [float(r["test/loss"]) for r in rows if r["variant"] == name] for name in ("narrow", "wide")}
    for name, row in variants.items():
        assert float(row["test/loss"]) == pytest.approx(np.mean(values[name]), abs=1e-6)
        assert float(row["sd"]) == pytest.approx(np.std(values[name], ddof=1), abs=1e-6)
        low, high = stats.t.interval(0.95, 1, loc=np.mean(values[name]), scale=stats.sem(values[name]))
        assert (float(row["ci95_low"]), float(row["ci95_high"])) == pytest.approx((low, high), abs=1e-6)
    best = min(values, key=lambda name: np.mean(values[name]))  # (a loss: lower is better)
    other = next(name for name in values if name != best)
    assert list(variants) == [best, other]  # best first
    reference = stats.ttest_ind(values[other], values[best], equal_var=False)
    assert float(variants[other]["welch_p"]) == pytest.approx(reference.pvalue, abs=1e-6)
    text = (compared / "results.md").read_text()
    assert f"| {best} | 2/2 |" in text and ("cannot tell it from the best" in text or "worse than the best" in text)


def test_the_same_seed_gives_the_same_run(compared, tmp_path):
    folder = prepare_workdir(tmp_path)
    (folder / "variants.yaml").write_text(VARIANTS.splitlines()[0] + "\n")
    result = run_compare(folder, *compare_args("again", "--metric", "test/loss", seeds="2,1"))
    assert result.returncode == 0, result.stderr[-3000:]
    again = {row["seed"]: row["test/loss"] for row in run_rows(folder / "logs" / "compare" / "again")}
    first = {row["seed"]: row["test/loss"] for row in run_rows(compared) if row["variant"] == "narrow"}
    assert again == first
    for seed in (1, 2):  # every logged value, at every step
        assert read_scalars(folder / "logs" / "compare" / "again" / "narrow" / f"seed_{seed}") == read_scalars(
            compared / "narrow" / f"seed_{seed}"
        )


def test_the_aggregate_runs_are_numpys_mean_and_sd_of_the_runs_event_values(compared):
    for variant in ("narrow", "wide"):
        runs = [read_scalars(run) for run in sorted((compared / variant).glob("seed_*"))]
        written = read_scalars(compared / "aggregate" / variant)
        for tag in ("val/acc", "train/loss", "val/loss"):
            steps = sorted({step for run in runs for step in run.get(tag, {})})
            assert steps and sorted(written[f"{tag}/mean"]) == steps
            for step in steps:
                values = np.array([run[tag][step] for run in runs if step in run.get(tag, {})])
                sd = values.std(ddof=1) if len(values) > 1 else 0.0
                # (TensorBoard's scalars are float32)
                assert written[f"{tag}/mean"][step] == pytest.approx(values.mean(), rel=1e-6, abs=1e-6)
                assert written[f"{tag}/lower"][step] == pytest.approx(values.mean() - sd, rel=1e-6, abs=1e-6)
                assert written[f"{tag}/upper"][step] == pytest.approx(values.mean() + sd, rel=1e-6, abs=1e-6)
                assert written[f"{tag}/runs"][step] == len(values)


def test_the_margin_chart_layout_is_read_back_from_the_event_file(compared):
    from tensorboard.plugins.custom_scalar import layout_pb2

    accumulator = EventAccumulator(str(compared / "aggregate" / "narrow"))
    accumulator.Reload()
    (tag,) = accumulator.PluginTagToContent("custom_scalars")  # (the layout is the value of the plugin's one tensor)
    parsed = layout_pb2.Layout.FromString(accumulator.Tensors(tag)[0].tensor_proto.string_val[0])
    (category,) = [c for c in parsed.category if c.title == CATEGORY]
    charts = {chart.title: chart for chart in category.chart}
    series = charts["val/acc"].margin.series[0]
    assert (series.value, series.lower, series.upper) == ("val/acc/mean", "val/acc/lower", "val/acc/upper")
    assert (compared / "compare.png").stat().st_size > 10_000


def test_a_killed_comparison_continues_with_the_runs_not_done_and_runs_none_twice(workdir):
    (workdir / "variants.yaml").write_text(VARIANTS)
    args = compare_args("killed", "--heartbeat", "1", seeds="2")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(workdir), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-m", "mlplab", *args], cwd=workdir, env=env, start_new_session=True)
    storage = f"sqlite:///{workdir / 'logs' / 'compare' / 'killed' / 'study.db'}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # wait for the first completed run, then kill the whole comparison mid-run
        assert process.poll() is None, "the comparison ended before it could be killed"
        try:
            states = [t.state for t in optuna.load_study(study_name="killed", storage=storage).get_trials(deepcopy=False)]
        except (KeyError, Exception):  # (the study may not exist yet)
            states = []
        if TrialState.COMPLETE in states and TrialState.RUNNING in states:
            break
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    time.sleep(3.5)  # (Optuna's grace period is itself a time: 3 heartbeats of 1 s without one mark the run failed)
    result = run_compare(workdir, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = optuna.load_study(study_name="killed", storage=storage).get_trials(deepcopy=False)
    complete = sorted((t.params["variant"], t.params["seed"]) for t in trials if t.state == TrialState.COMPLETE)
    assert complete == [("narrow", 1), ("narrow", 2), ("wide", 1), ("wide", 2)]  # each pair done once
    assert any(t.state == TrialState.FAIL for t in trials)  # the run that was killed, run again
    assert len(run_rows(workdir / "logs" / "compare" / "killed")) == 4


def test_the_margin_charts_draw_one_band_per_variant_in_headless_chromium(compared, tmp_path):
    from tools.dashboard import CHROMIUM, render_custom_scalars, tensorboard

    if not Path(CHROMIUM).exists():
        pytest.skip(f"no {CHROMIUM} (apt-get install chromium)")
    expected = {"val/loss": 2, "val/acc": 2, "train/loss": 2, "train/acc": 2}
    with tensorboard(compared) as url:
        drawn = render_custom_scalars(url, screenshot=tmp_path / "margin.png", expected=None, margin=True)
    assert {title: drawn.get(title) for title in expected} == expected, drawn
    assert "tune/pruned" not in drawn and "hp_metric" not in drawn  # metrics only
