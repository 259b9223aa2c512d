"""`mlplab tune`: real Optuna studies of real `mlplab fit` trial processes on tiny data.

The embedded SQLite store with two workers, two processes joining one study on a real PostgreSQL
server (started from the Debian binaries as the `postgres` user, unix socket only), pruning, a
failing trial, a tune process SIGKILLed mid-trial, and `mlplab fit --config best.yaml`.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mlplab.errors import ConfigError
from mlplab.tune.space import load_space

from .conftest import free_port
from .test_faults import mlplab, mlplab_in_process, tiny_args, workdir  # noqa: F401 - the fixture is used by name

LR_SPACE = "model.optimizer.init_args.lr: {type: float, low: 1.0e-2, high: 0.2, log: true}\n"
WIDE_LR_SPACE = "model.optimizer.init_args.lr: {type: float, low: 1.0e-7, high: 1.0e+6, log: true}\n"
POSTGRES_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))


def tune_args(study: str, n_trials: int, *extra: str, space: str = "space.yaml") -> list[str]:
    return ["tune", "--space", space, "--study", study, "--n_trials", str(n_trials), *extra, *tiny_args(3)]


def write_space(folder: Path, text: str = LR_SPACE + "model.hidden_dims: {type: categorical, choices: [[16], [32, 16]]}\n") -> None:
    (folder / "space.yaml").write_text(text)


def rows(folder: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((folder / "trials.csv").open()))


def check_one_run_per_trial(folder: Path, n_trials: int) -> list[dict[str, str]]:
    table = rows(folder)
    assert sorted(int(row["number"]) for row in table) == list(range(n_trials))
    assert sorted(p.name for p in folder.glob("trial_*")) == [f"trial_{n:04d}" for n in range(n_trials)]
    for row in table:  # run paths as the tune process saw them (relative to the folder it ran in)
        row["run"] = str(folder.parents[2] / row["run"])
        assert Path(row["run"]).name == f"trial_{int(row['number']):04d}" and list(Path(row["run"]).glob("events.out.tfevents.*"))
    return table


def best_val_acc(checkpoint: Path) -> float:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    scores = [v["best_model_score"] for k, v in state["callbacks"].items() if k.startswith("ModelCheckpoint") and v["monitor"] == "val/acc"]
    return float(scores[0])


# ---------------------------------------------------------------- the space file: refused before any trial


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a.b: {type: float, low: 1, high: 1}\n", "a.b: low=1 must be below high=1"),
        ("a.b: {type: categorical, choices: []}\n", "a.b: choices=[] must be a non-empty list"),
        ("a.b: {type: normal, low: 0, high: 1}\n", "a.b: type 'normal' is not allowed"),
        ("a.b: {type: int, low: 1, high: 9, stp: 2}\n", "a.b: stp is not a field of a int parameter"),
        ("a.b: {type: float, low: 0, high: 1, log: true}\n", "log=true needs low > 0"),
        ("a.b: [1, 2\n", "is not valid YAML at line"),
    ],
)
def test_bad_space_file_is_one_error_naming_the_key(tmp_path, text, expected):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace("]", r"\]")) as err:
        load_space(path)
    assert str(path) in str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ("model.hiden_dims: {type: categorical, choices: [[16]]}\n", "model.hiden_dims=[16] is refused by the config"),
        ("model.dropout: {type: float, low: 0.1, high: 1.5}\n", "model.dropout=1.5 is refused by the config: model.dropout=1.5"),
    ],
)
def test_space_the_config_refuses_is_refused_before_any_trial(workdir, monkeypatch, capsys, space, expected):  # noqa: F811
    write_space(workdir, space)
    # (in this process: with --launch process, nothing is started before the refusal)
    result = mlplab_in_process(workdir, monkeypatch, capsys, *tune_args("bad", 2, "--launch", "process"))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"mlplab: error: space.yaml: {expected}" in result.stderr
    assert not (workdir / "logs").exists()  # nothing was created: no study, no run folder


@pytest.mark.slow
def test_bad_storage_url_is_refused_before_any_trial(workdir, monkeypatch, capsys):  # noqa: F811
    write_space(workdir)
    url = "postgresql://mlplab:secret@/nodb?host=/nonexistent"
    result = mlplab_in_process(workdir, monkeypatch, capsys, *tune_args("bad", 2, "--storage", url, "--launch", "process"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "mlplab: error: --storage 'postgresql://mlplab:***@/nodb?host=/nonexistent' cannot be opened" in result.stderr
    assert "secret" not in result.stderr and not (workdir / "logs").exists()


# ---------------------------------------------------------------- the embedded store, several workers

# Each trial announces itself as it starts training, then waits until a second trial has too: with two workers, the
# first two trials meet; run one after the other, the first would wait in vain and fail (the deadline only bounds a hang).
MEET_CALLBACK = """
import os, time
from pathlib import Path
from lightning.pytorch import Callback

class MeetAnotherTrial(Callback):
    def on_train_start(self, trainer, pl_module):
        Path(f"trial_started_{os.getpid()}").touch()
        deadline = time.monotonic() + 300
        while len(list(Path().glob("trial_started_*"))) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError("no other trial started while this one waited")
            time.sleep(0.05)
"""


@pytest.mark.slow
def test_embedded_study_with_two_workers_then_best_yaml_reproduces_the_best_trial(workdir):  # noqa: F811
    write_space(workdir)
    (workdir / "meet.py").write_text(MEET_CALLBACK)
    result = mlplab(workdir, *tune_args("local", 4, "--workers", "2"), "--trainer.callbacks+=meet.MeetAnotherTrial", timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = workdir / "logs" / "tune" / "local"
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("mlplab: best val/acc=") and f"table={folder / 'trials.csv'}".replace(str(workdir) + "/", "") in last
    table = check_one_run_per_trial(folder, 4)
    assert all(row["state"] == "complete" and 0 < float(row["val/acc"]) <= 1 for row in table)  # (the first two met)
    study = optuna.load_study(study_name="local", storage=f"sqlite:///{folder / 'study.db'}")
    # TensorBoard's HParams tab compares the trials: each run's hp_metric is its objective
    for row in table:
        events = EventAccumulator(row["run"]).Reload()
        assert events.Scalars("hp_metric")[-1].value == pytest.approx(float(row["val/acc"]), abs=1e-4)
    # best.yaml trains the best trial again: same best validation accuracy (deterministic CPU run)
    best = study.best_trial
    fit = mlplab(workdir, "fit", "--config", str(folder / "best.yaml"), "--trainer.logger.init_args.name=again", timeout=300)
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert best_val_acc(workdir / "logs" / "again" / "version_0" / "checkpoints" / "last.ckpt") == pytest.approx(best.value, abs=1e-6)


# ---------------------------------------------------------------- pruning, failing trials, a killed process


@pytest.mark.slow
def test_pruner_prunes_a_bad_trial_and_a_diverging_trial_fails_while_the_study_completes(workdir):  # noqa: F811
    write_space(workdir, WIDE_LR_SPACE)
    folder = workdir / "logs" / "tune" / "pruning"
    folder.mkdir(parents=True)
    study = optuna.create_study(study_name="pruning", storage=f"sqlite:///{folder / 'study.db'}", direction="maximize")
    for lr in (0.05, 0.1, 1e-7, 1e6):  # two good trials to compare with, one that learns nothing, one that diverges
        study.enqueue_trial({"model.optimizer.init_args.lr": lr})
    result = mlplab(workdir, *tune_args("pruning", 4, "--pruner_startup_trials", "2"), timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    table = check_one_run_per_trial(folder, 4)
    assert [row["state"] for row in table] == ["complete", "complete", "pruned", "fail"]
    assert table[2]["pruned_at_epoch"] == "0" and table[2]["epochs"] == "1"
    assert "diverged" in table[3]["reason"] or "not finite" in table[3]["reason"], table[3]
    assert f"mlplab tune: trial 3 failed: {table[3]['reason']}" in result.stderr
    assert "trials=4" in result.stdout.splitlines()[-1]
    pruned = EventAccumulator(table[2]["run"]).Reload()
    assert [event.value for event in pruned.Scalars("tune/pruned")] == [1.0]  # marked in TensorBoard too
    assert EventAccumulator(table[0]["run"]).Reload().Scalars("tune/pruned")[-1].value == 0.0


def running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# Holds the first trial at its third step (once: it leaves a marker), writing its pid: the test acts on a trial that is
# certainly training, however busy the machine, instead of one that may be ending already.
HOLD_CALLBACK = """
import os, time
from pathlib import Path
from lightning.pytorch import Callback

class HoldAtStep(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        marker = Path("trial_held")
        if trainer.global_step == 3 and not marker.exists():
            marker.write_text(str(os.getpid()))
            time.sleep(600)  # until the test kills the tune process, and this trial with it
"""


@pytest.mark.slow
def test_a_tune_process_killed_mid_trial_leaves_a_study_that_loads_and_continues(workdir):  # noqa: F811
    write_space(workdir)
    (workdir / "hold.py").write_text(HOLD_CALLBACK)
    args = [*tune_args("killed", 2, "--heartbeat", "1"), "--trainer.callbacks+=hold.HoldAtStep"]
    process = mlplab(workdir, *args, wait=False)
    folder = workdir / "logs" / "tune" / "killed"
    marker = workdir / "trial_held"
    deadline = time.monotonic() + 300
    while not (marker.exists() and marker.read_text()) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    trial_pid = int(marker.read_text())
    study = optuna.load_study(study_name="killed", storage=f"sqlite:///{folder / 'study.db'}")
    assert study.trials[0].user_attrs["trial_process"] == trial_pid and running(trial_pid)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 60  # the fork server sees its parent gone, exits, and the trial's PDEATHSIG fires
    while running(trial_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running(trial_pid)  # the trial died with it
    study = optuna.load_study(study_name="killed", storage=f"sqlite:///{folder / 'study.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.RUNNING]
    time.sleep(3.5)  # the heartbeat's grace period (3 intervals of 1 s) is itself a time: then the next process fails the trial
    result = mlplab(workdir, *args, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [row["state"] for row in rows(folder)] == ["fail", "complete"]


@pytest.mark.slow
def test_warm_and_plain_trial_processes_give_the_same_trials(workdir):  # noqa: F811
    # trials forked from the warm server and trials started from scratch: the same fits, values and best.yaml
    write_space(workdir)
    tables, best = {}, {}
    for launch in ("process", "warm"):
        args = tune_args(f"same_{launch}", 2, "--sampler_seed", "7", "--pruner", "none", "--launch", launch)
        result = mlplab(workdir, *args, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        folder = workdir / "logs" / "tune" / f"same_{launch}"
        tables[launch] = [{k: v for k, v in row.items() if k not in ("seconds", "process", "run")} for row in rows(folder)]
        best[launch] = (folder / "best.yaml").read_text().split("\n", 1)[1]  # (its first line names the study)
    assert tables["process"] == tables["warm"] and [row["state"] for row in tables["warm"]] == ["complete"] * 2
    assert best["process"] == best["warm"]


# ---------------------------------------------------------------- several machines: a shared PostgreSQL database


@pytest.fixture
def postgres_url():
    """A PostgreSQL server of this machine's Debian binaries, run as `postgres` on a unix socket in a temp folder.

    (The folder is made directly in /tmp: pytest's own temp folders are private to root, which `postgres` cannot enter.)
    """
    if not POSTGRES_BIN or shutil.which("runuser") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL server binaries (/usr/lib/postgresql/*/bin) are missing: CI machines have them")
        pytest.skip("no PostgreSQL server binaries here")
    folder = Path(tempfile.mkdtemp(prefix="mlplab-postgres-"))
    data, sockets = folder / "data", folder / "sockets"
    sockets.mkdir()
    shutil.chown(folder, "postgres")
    shutil.chown(sockets, "postgres")

    def as_postgres(*command: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(["runuser", "-u", "postgres", "--", *command], check=True, capture_output=True, **kwargs)

    bin_dir = POSTGRES_BIN[-1]
    as_postgres(str(bin_dir / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres")
    server = subprocess.Popen(
        ["runuser", "-u", "postgres", "--", str(bin_dir / "postgres"), "-D", str(data), "-k", str(sockets), "-c", "listen_addresses="],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120  # (bounds a hang: the server is ready when pg_isready says so)
        while subprocess.run([str(bin_dir / "pg_isready"), "-h", str(sockets)], capture_output=True).returncode != 0:
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the PostgreSQL server in {folder} did not accept connections (exit status {server.poll()})")
            time.sleep(0.1)
        yield f"postgresql://postgres@/postgres?host={sockets}"
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_two_processes_join_one_study_in_postgresql(workdir, postgres_url):  # noqa: F811
    write_space(workdir)
    (workdir / "meet.py").write_text(MEET_CALLBACK)  # the first trial of each process waits for the other's: they run together
    args = (*tune_args("shared", 4, "--storage", postgres_url), "--trainer.callbacks+=meet.MeetAnotherTrial")
    first, second = (mlplab(workdir, *args, wait=False) for _ in range(2))
    outputs = [process.communicate(timeout=400) for process in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, [err[-3000:] for _, err in outputs]
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert {t.user_attrs["process"] for t in study.trials} == {first.pid, second.pid}  # both ran trials
    check_one_run_per_trial(workdir / "logs" / "tune" / "shared", 4)


@pytest.mark.slow
def test_optuna_dashboard_serves_the_study_on_loopback(tmp_path):
    """The documented dashboard command on a study's embedded storage (docs/usage.md)."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="seen", storage=storage, direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    dashboard = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent))
    for _ in range(3):  # (a port picked free may be taken by another process before the server binds it: then another port)
        port = free_port()
        server = subprocess.Popen(
            [dashboard, storage, "--host", "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            studies = studies_served(server, f"http://127.0.0.1:{port}/api/studies")
        finally:
            server.terminate()
            stderr = server.communicate(timeout=30)[1].decode()
        if studies is not None or "Address already in use" not in stderr:
            break
    assert studies is not None, f"optuna-dashboard exited with status {server.returncode}: {stderr[-2000:]}"
    assert [(s["study_name"], s["directions"]) for s in studies] == [("seen", ["maximize"])]


def studies_served(server: subprocess.Popen, url: str) -> list[dict] | None:
    """The study list the dashboard serves once it answers; None when the server exits first."""
    deadline = time.monotonic() + 120  # (bounds a hang)
    while server.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.load(response)["study_summaries"]
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"optuna-dashboard did not answer {url} within 120 s")
            time.sleep(0.2)
    return None


# Sends SIGINT to its own process group (the terminal's Ctrl-C: the tune process and its trials) from inside
# the first trial, at the chosen hook, once: the signal comes at a known moment of the study, however busy the machine.
CTRL_C_CALLBACK = """
import os, signal
from pathlib import Path
from lightning.pytorch import Callback

class CtrlCAt(Callback):
    def __init__(self, hook: str):
        self.hook = hook
        setattr(self, hook, self.press)

    def press(self, trainer, *args, **kwargs):
        marker = Path("ctrl_c_pressed")
        if not marker.exists():
            marker.touch()
            os.killpg(os.getpgrp(), signal.SIGINT)
"""
CTRL_C_MOMENTS = {
    "the trial starts": "setup",
    "the trial trains": "on_train_batch_end",
    "the trial validates": "on_validation_start",
    "the trial ends and is recorded": "teardown",
}


# `mlplab tune` started with SIGINT ignored, as a non-interactive shell starts its background jobs (`mlplab tune ... &`
# in a script): the tune process takes SIGINT all the same, and so must its trials before their fit installs a handler
STARTED_WITH_SIGINT_IGNORED = [
    "-c", "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); os.execv(sys.executable, [sys.executable, *sys.argv[1:]])",
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    ("moment", "started"),
    [(moment, "from a terminal") for moment in CTRL_C_MOMENTS]
    + [(moment, "with SIGINT ignored") for moment in ("the trial starts", "the trial validates")],
)
def test_ctrl_c_at_any_moment_stops_the_study_with_130_and_it_continues(workdir, moment, started):  # noqa: F811
    write_space(workdir)
    (workdir / "ctrlc.py").write_text(CTRL_C_CALLBACK)
    args = [*tune_args("stopped", 2), "--pruner", "none"]
    pressing = ["--trainer.callbacks+=ctrlc.CtrlCAt", f"--trainer.callbacks.hook={CTRL_C_MOMENTS[moment]}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(workdir), os.environ.get("PYTHONPATH", "")])}
    prefix = STARTED_WITH_SIGINT_IGNORED if started == "with SIGINT ignored" else []
    # its own process group, as a terminal's foreground job: Ctrl-C reaches the tune process and its trial
    process = subprocess.Popen(
        [sys.executable, *prefix, "-m", "mlplab.cli", *args, *pressing], cwd=workdir, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    stdout, stderr = process.communicate(timeout=300)
    assert (workdir / "ctrl_c_pressed").exists()
    assert process.returncode == 130, stdout[-2000:] + stderr[-3000:]
    assert "mlplab tune: interrupted; the study keeps its 1 finished trials" in stdout
    assert "Run the same command again to continue it (--study stopped)" in stdout
    folder = workdir / "logs" / "tune" / "stopped"
    [first] = rows(folder)  # no second trial was started
    if first["state"] == "fail":
        assert first["reason"].startswith("interrupted (Ctrl-C)"), first
    else:  # the signal came after the fit had finished: the trial is complete, and recorded as such
        assert moment == "the trial ends and is recorded" and first["state"] == "complete", first
    if moment in ("the trial trains", "the trial ends and is recorded"):  # (a failed first trial, and a completed one)
        again = mlplab(workdir, *args, *pressing, timeout=300)  # the same command continues to the study's 2 trials
        assert again.returncode == 0, again.stderr[-3000:]
        assert [row["state"] for row in rows(folder)] == [first["state"], "complete"]
