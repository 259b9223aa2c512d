"""Faults, with real processes: bad input, corrupt files, SIGKILL, Ctrl-C, malicious checkpoints, concurrent runs.

Every case runs the real ``mlplab`` command (or real Python) in a subprocess on tiny IDX data
written to a temp dir, so it exercises exit codes, signals and files as a user would meet them.
(A diverging run — NaN at lr=1e6 on real MNIST — is in tests/test_e2e.py.)
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mlplab import LitMLP
from mlplab.checkpointing import check_checkpoint_file
from mlplab.cli import main
from mlplab.data import write_idx
from mlplab.data.idx import open_maybe_gzip
from mlplab.errors import ConfigError

from .conftest import FILE_NAMES, make_tiny_idx, once_per_session

ROOT = Path(__file__).resolve().parents[1]

# A user's own IDX data set is a four-line subclass (see the README); tests generate one per data folder.
DATAMODULE_TEMPLATE = """
from mlplab.data import IDXDataModule
from mlplab.data.sources import DatasetSource, IDXFile

def _no_fetch(scratch):
    raise RuntimeError("test data is never fetched")

class TinyDataModule(IDXDataModule):
    source = DatasetSource("Tiny", "Tiny", {files}, torchvision_class="MNIST", fetch_from_registry=_no_fetch, manual_hint="(test data)")
    classes = tuple("0123456789")
"""

# Sends a real signal to its own process at the start of the first call at or after `step`.
SIGNAL_CALLBACK = """
import os, signal
from lightning.pytorch import Callback

class SignalAtStep(Callback):
    def __init__(self, step: int, signal_name: str = "SIGKILL", rank: int = 0):
        self.step, self.signal_name, self.rank, self.sent = step, signal_name, rank, False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step >= self.step and not self.sent and trainer.global_rank == self.rank:
            self.sent = True
            os.kill(os.getpid(), getattr(signal, self.signal_name))
"""


def write_datamodule(folder: Path, raw_dir: Path) -> None:
    """``folder/tinydata.py`` with a DataModule whose checksums are those of the files now in ``raw_dir``."""
    files = ", ".join(
        f'IDXFile("{name}", "{hashlib.md5(open_maybe_gzip(next(raw_dir.glob(name + "*")))).hexdigest()}")' for name in FILE_NAMES
    )
    (folder / "tinydata.py").write_text(DATAMODULE_TEMPLATE.format(files=files))
    (folder / "faulthelpers.py").write_text(SIGNAL_CALLBACK)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder with tiny data in ``Tiny/raw``, its DataModule module and the signal callback; runs happen there."""
    return prepare_workdir(tmp_path)


def prepare_workdir(folder: Path) -> Path:
    """Make ``folder`` a work folder: tiny data in ``Tiny/raw``, its DataModule module and the signal callback."""
    make_tiny_idx(folder / "Tiny" / "raw")
    write_datamodule(folder, folder / "Tiny" / "raw")
    return folder


def tiny_args(max_epochs: int = 4) -> list[str]:
    return [
        "--data=tinydata.TinyDataModule",
        "--data.data_dir=.",
        "--data.val_size=40",
        "--data.batch_size=32",
        "--model.hidden_dims=[16]",
        "--model.dropout=0.3",
        "--model.steps_per_call=2",
        "--model.optimizer=SGD",
        "--model.optimizer.lr=0.05",
        "--model.optimizer.momentum=0.9",
        "--model.lr_scheduler=StepLR",
        "--model.lr_scheduler.step_size=1",
        "--model.lr_scheduler.gamma=0.7",
        f"--trainer.max_epochs={max_epochs}",
        "--trainer.deterministic=true",
        "--trainer.enable_progress_bar=false",
        "--trainer.logger.init_args.name=tiny",
        "--early_stopping.patience=2",
    ]


def mlplab(workdir: Path, *args: str, wait: bool = True, timeout: float = 180) -> subprocess.CompletedProcess | subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(workdir), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "mlplab.cli", *args]
    if not wait:
        return subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)


def error_paragraph(result: subprocess.CompletedProcess) -> str:
    """The run's error: exit code 2, no traceback, one `mlplab: error:` line."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("mlplab: error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


# ---------------------------------------------------------------- bad configuration: refused before training

BAD_CONFIGS = {
    "unknown optimizer": (["--model.optimizer=Adamm"], ["Adamm", "Allowed:", "SGD"]),
    "unknown scheduler": (["--model.lr_scheduler=StepLRR"], ["StepLRR", "Allowed:", "CosineAnnealingLR"]),
    "unknown activation": (["--model.activation=relux"], ["model.activation='relux'", "allowed:", "gelu"]),
    "unknown init": (["--model.init=hee"], ["model.init='hee'", "allowed:", "kaiming_normal"]),
    "unknown data set": (["--data=CIFAR10DataModule"], ['"data"', "CIFAR10DataModule"]),
    "lr zero": (["--model.optimizer.lr=0"], ["model.optimizer.lr=0", "positive, finite"]),
    "lr negative": (["--model.optimizer.lr=-1"], ["model.optimizer.lr=-1", "positive, finite"]),
    "lr not finite": (["--model.optimizer.lr=.inf"], ["model.optimizer.lr=inf", "positive, finite"]),
    "lr nan for a named optimizer": (
        ["--model.optimizer=SGD", "--model.optimizer.lr=nan"],
        ["model.optimizer.lr=nan (from the command line) is not allowed", "positive, finite number"],
    ),
    # a Trainer argument error is named as one, not as a hardware problem
    "max_epochs negative": (["--trainer.max_epochs=-5"], ["trainer.max_epochs=-5 (from the command line) is not allowed", "non-negative"]),
    "dropout 1": (["--model.dropout=1.0"], ["model.dropout=1.0", "[0, 1)"]),
    "hidden width 0": (["--model.hidden_dims=[0,10]"], ["model.hidden_dims=[0, 10]", "positive integer"]),
    "batch size 0": (["--data.batch_size=0"], ["data.batch_size=0", "positive integer"]),
    "batch larger than train split": (["--data.batch_size=500"], ["data.batch_size=500", "200 training samples"]),
    "val_size too large": (["--data.val_size=240"], ["data.val_size=240", "240 training samples"]),
    "pca components > input": (["--data.normalize=pca", "--data.pca_components=1000"], ["data.pca_components=1000", "1..784"]),
    "pca components unused": (
        ["--data.pca_components=20"],
        ["data.pca_components=20 has no effect", "normalize='standardize'", "pca_whiten"],
    ),
    "augment_epochs without augmentation": (
        ["--data.augment_epochs=3"],
        ["data.augment_epochs=3 has no effect without augmentation", "augment_elastic"],
    ),
    "regression on classes": (["--model.task=regression"], ["model.task='regression'", "'multiclass' data set"]),
    "data_dir not writable": (
        ["--data.data_dir=/proc/mlplab-nope"],
        ["data.data_dir='/proc/mlplab-nope'", "could not be created or written"],
    ),
    "ckpt_path missing": (["--ckpt_path=missing.ckpt"], ["ckpt_path='missing.ckpt' does not exist"]),
    "checkpoint monitor never logged": (["--checkpoint.monitor=val/accuracy"], ["'val/accuracy'", "never logged", "val/acc,"]),
    "early-stopping monitor never logged": (["--early_stopping.monitor=val/los"], ["'val/los'", "never logged", "val/loss"]),
    "plateau without validation every epoch": (
        ["--model.lr_scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau", "--trainer.check_val_every_n_epoch=2"],
        ["model.lr_scheduler_monitor='val/loss' is a validation metric", "check_val_every_n_epoch=2", "check_val_every_n_epoch=1"],
    ),
    "plateau monitor never logged": (
        ["--model.lr_scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau", "--model.lr_scheduler_monitor=val/lozz"],
        ["model.lr_scheduler_monitor='val/lozz'", "never logged"],
    ),
    # a fraction of the loader's batches below one batch names the batch size that makes it one (40 val, 200 train samples)
    "fraction of one validation batch": (
        ["--data.eval_batch_size=64", "--trainer.limit_val_batches=0.1"],
        [
            "trainer.limit_val_batches=0.1 of the 1 val batches (data.eval_batch_size=64)",
            "data.eval_batch_size to at most 4",
            "whole number",
        ],
    ),
    "fraction of the training batches": (
        ["--trainer.limit_train_batches=0.1"],
        ["trainer.limit_train_batches=0.1 of the 7 train batches (data.batch_size=32)", "data.batch_size to at most 20"],
    ),
    "a preset that does not exist": (
        ["--config", "seeds/d2l_fashon_mlp"],
        ["'seeds/d2l_fashon_mlp' is neither a file nor one of mlplab's presets", "Did you mean seeds/d2l_fashion_mlp?", "mlplab presets"],
    ),
}
if not torch.cuda.is_available():
    BAD_CONFIGS["gpu without a GPU"] = (["--trainer.accelerator=gpu"], ["trainer.accelerator='gpu'", "0 CUDA GPU(s)", "accelerator=cpu"])


def mlplab_in_process(
    folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str
) -> subprocess.CompletedProcess:
    """``mlplab *args`` run by this Python process in ``folder`` (its working folder and first import path).

    For refusals, which is all these cases are about: what the command prints and the exit status it ends with,
    without paying for a new interpreter importing torch and Lightning per case.
    """
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "argv", ["mlplab"])  # (LightningCLI warns when pytest's own arguments are there too)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "tinydata", raising=False)  # this folder's data module, not an earlier test's
    try:
        main(list(args))
        status = 0
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(["mlplab", *args], status, captured.out, captured.err)


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_configuration_is_one_clear_paragraph_before_training(workdir, monkeypatch, capsys, case):
    result = mlplab_in_process(workdir, monkeypatch, capsys, "fit", *tiny_args(1), *BAD_CONFIGS[case][0])
    message = error_paragraph(result)
    for fragment in BAD_CONFIGS[case][1]:
        assert fragment in message, message
    assert ("CUDA GPU" in message) == (case == "gpu without a GPU"), message  # only hardware problems speak of the machine
    if case in ("lr nan for a named optimizer", "max_epochs negative"):
        assert "Expected a" not in message and "Union subtypes" not in message, message  # no raw jsonargparse text
    assert "Epoch 0" not in result.stdout + result.stderr  # no training started
    assert not list(workdir.glob("logs/**/*.ckpt")) and not list(workdir.glob("logs/*/version_*"))  # nothing left behind


def test_a_typod_section_is_named_even_when_a_later_option_fails_first(tmp_path, monkeypatch, capsys):
    (tmp_path / "typo.yaml").write_text("modle:\n  hidden_dims: [32]\n")
    message = error_paragraph(
        mlplab_in_process(tmp_path, monkeypatch, capsys, "fit", "--config", "typo.yaml", f"--data.data_dir={tmp_path}")
    )
    assert "`modle.hidden_dims` (from config file 'typo.yaml') is not an option" in message and "Did you mean `model`?" in message, message
    (tmp_path / "typo.yaml").write_text("trainer:\n  max_epochs: 1\n")
    message = error_paragraph(
        mlplab_in_process(tmp_path, monkeypatch, capsys, "fit", "--config", "typo.yaml", f"--data.data_dir={tmp_path}")
    )
    assert "`data.data_dir` (from the command line) is an option of a data module, but no data module is chosen" in message, message
    assert "MNISTDataModule" in message and "Did you mean" not in message, message
    assert sorted(path.name for path in tmp_path.iterdir()) == ["typo.yaml"]  # nothing left behind


# ---------------------------------------------------------------- bad data: real corrupt files


def corrupt(raw_dir: Path, case: str) -> None:
    labels = raw_dir / "train-labels-idx1-ubyte"
    if case == "missing file":
        labels.unlink()
    elif case == "truncated file":
        labels.write_bytes(labels.read_bytes()[:100])
    elif case == "wrong magic number":
        labels.write_bytes(b"\x12\x34" + labels.read_bytes()[2:])  # an IDX file starts with two zero bytes
    elif case == "images/labels count mismatch":
        write_idx(labels, torch.zeros(239, dtype=torch.uint8))
    elif case == "labels out of range":
        write_idx(labels, torch.full((240,), 12, dtype=torch.uint8))
    elif case == ".gz that is not gzip":
        labels.unlink()
        (raw_dir / "train-labels-idx1-ubyte.gz").write_bytes(b"this is not gzip data")


BAD_DATA = {
    "missing file": "train-labels-idx1-ubyte (or .gz) is missing",
    "truncated file": "train-labels-idx1-ubyte holds 92 data bytes but its header (shape (240,)) announces 240",
    "wrong magic number": "train-labels-idx1-ubyte is not an IDX file: its magic number is 12340801",
    "images/labels count mismatch": "holds 240 images but",
    "labels out of range": "labels in [12, 12], allowed 0..9",
    ".gz that is not gzip": "train-labels-idx1-ubyte.gz is named .gz but is not a gzip file",
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_file_is_named_with_what_was_expected(tmp_path, monkeypatch, capsys, case):
    raw_dir = tmp_path / "Tiny" / "raw"
    make_tiny_idx(raw_dir)
    corrupt(raw_dir, case)
    # The DataModule's checksums are those of the corrupt files (so the IDX reader's own checks are what fires),
    # or of intact files where the corrupt one cannot even be read.
    checksums_of = raw_dir if case not in ("missing file", ".gz that is not gzip") else tmp_path / "intact" / "raw"
    if checksums_of != raw_dir:
        make_tiny_idx(checksums_of)
    write_datamodule(tmp_path, checksums_of)
    message = error_paragraph(mlplab_in_process(tmp_path, monkeypatch, capsys, "fit", *tiny_args(1), "--data.download=false"))
    assert BAD_DATA[case] in message, message
    assert not list(tmp_path.glob("logs/**/*.ckpt"))


def test_real_mnist_file_with_wrong_checksum_is_refused(real_mnist, tmp_path, monkeypatch, capsys):
    raw_dir = tmp_path / "MNIST" / "raw"
    raw_dir.mkdir(parents=True)
    for name in FILE_NAMES:
        if name != "train-labels-idx1-ubyte":
            (raw_dir / name).symlink_to(real_mnist / name)
    (raw_dir / "train-labels-idx1-ubyte").write_bytes((real_mnist / "train-labels-idx1-ubyte").read_bytes()[:-5])  # truncated copy
    config = str(ROOT / "configs/mnist.yaml")
    result = mlplab_in_process(
        tmp_path, monkeypatch, capsys, "fit", "--config", config, f"--data.data_dir={tmp_path}", "--trainer.max_epochs=1"
    )
    message = error_paragraph(result)
    assert "train-labels-idx1-ubyte fails its checksum: expected MD5 a25bea736e30d166cdddb491f175f624" in message
    assert (raw_dir / "train-labels-idx1-ubyte").stat().st_size == 60008 - 5  # reported, never replaced or used


@pytest.mark.slow  # (real processes, killed or signalled)
def test_download_killed_midway_leaves_no_file_a_later_run_trusts(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from mlplab.data.sources import DatasetSource, IDXFile, ensure_dataset
        def dies_while_writing(scratch):
            (scratch / "train-images-idx3-ubyte").write_bytes(b"half a file")
            os.kill(os.getpid(), signal.SIGKILL)
        files = [IDXFile(name, "0" * 32) for name in {FILE_NAMES!r}]
        source = DatasetSource("Tiny", "Tiny", *files, torchvision_class="MNIST", fetch_from_registry=dies_while_writing, manual_hint="")
        ensure_dataset(source, {str(tmp_path)!r}, methods=("registry",))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL
    raw_dir = tmp_path / "Tiny" / "raw"
    assert not [p for p in raw_dir.iterdir() if p.name.startswith(("train", "t10k"))]  # the half file never reached raw/


# ---------------------------------------------------------------- crash, Ctrl-C and resume


def final_state(workdir: Path, version: int) -> tuple[dict, dict]:
    """The run's last checkpoint and its logged scalars (step -> value, last write wins)."""
    run_dir = workdir / "logs" / "tiny" / f"version_{version}"
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    events = EventAccumulator(str(run_dir))
    events.Reload()
    scalars = {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}
    assert {"train/acc", "train/loss", "val/acc", "val/loss"} <= set(scalars)
    return checkpoint, scalars


def assert_same_training(reference: tuple[dict, dict], resumed: tuple[dict, dict]) -> None:
    (ref_ckpt, ref_scalars), (ckpt, scalars) = reference, resumed
    assert ckpt["global_step"] == ref_ckpt["global_step"] and ckpt["epoch"] == ref_ckpt["epoch"]
    for key, value in ref_ckpt["state_dict"].items():
        assert torch.equal(value, ckpt["state_dict"][key]), key  # bit for bit
    for ref_state, state in zip(
        ref_ckpt["optimizer_states"][0]["state"].values(), ckpt["optimizer_states"][0]["state"].values(), strict=True
    ):
        assert torch.equal(ref_state["momentum_buffer"], state["momentum_buffer"])
    assert ckpt["lr_schedulers"] == ref_ckpt["lr_schedulers"]
    assert scalars == ref_scalars  # every logged train/val metric and lr, every epoch


def uninterrupted(tmp_path_factory: pytest.TempPathFactory, name: str, *args: str) -> tuple[dict, dict]:
    """The final state of ``mlplab fit tiny_args() *args`` run to its end, once per test session (in a fresh work folder)."""

    def produce(folder: Path) -> dict:
        prepare_workdir(folder)
        result = mlplab(folder, "fit", *tiny_args(), *args, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        return {"folder": str(folder)}

    return final_state(Path(once_per_session(tmp_path_factory, name, produce)["folder"]), 0)


@pytest.fixture
def reference(tmp_path_factory) -> tuple[dict, dict]:
    """One uninterrupted run that the interrupted-then-resumed runs of this module must equal (same tiny data)."""
    return uninterrupted(tmp_path_factory, "faults_reference")


@pytest.mark.slow  # (real processes, killed or signalled)
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(workdir, reference):
    killed = mlplab(workdir, "fit", *tiny_args(), "--trainer.callbacks+=faulthelpers.SignalAtStep", "--trainer.callbacks.step=10")
    assert killed.returncode == -signal.SIGKILL  # a real SIGKILL in epoch 1 (7 steps per epoch)
    resumed = mlplab(workdir, "fit", *tiny_args(), "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from logs/tiny/version_0/checkpoints/last.ckpt" in resumed.stdout + resumed.stderr
    assert_same_training(reference, final_state(workdir, 0))
    assert not (workdir / "logs" / "tiny" / "version_1").exists()  # the resumed run continued in its own folder


@pytest.mark.slow  # (real processes, killed or signalled)
def test_ctrl_c_saves_a_mid_epoch_checkpoint_that_resumes_exactly(workdir, reference):
    interrupted = mlplab(
        workdir,
        "fit",
        *tiny_args(),
        "--trainer.callbacks+=faulthelpers.SignalAtStep",
        "--trainer.callbacks.step=10",
        "--trainer.callbacks.signal_name=SIGINT",
    )
    output = interrupted.stdout + interrupted.stderr
    # SIGINT arrives as the batch of step 11 starts (global_step 10): that step completes, then the run stops
    assert interrupted.returncode == 1 and "mlplab: SIGINT: interrupted in epoch 1 after optimizer step 11" in output, output[-3000:]
    saved = torch.load(workdir / "logs/tiny/version_0/checkpoints/last.ckpt", weights_only=True)
    assert saved["global_step"] == 11 and saved["TinyDataModule"]["train_position"] == {
        "epoch": 1,
        "batches_served": 4,
    }  # 7 batches per epoch
    resumed = mlplab(workdir, "fit", *tiny_args(), "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_training(reference, final_state(workdir, 0))


@pytest.mark.parametrize(
    ("steps_per_call", "signal_step", "stopped_after", "served"),
    [(4, 9, 10, 3), (1, 10, 11, 4)],
    ids=["mid-group (third batch of a group of 4)", "Lightning's own step"],
)
def test_ctrl_c_inside_a_group_or_on_lightnings_step_resumes_exactly(
    workdir, reference, monkeypatch, capsys, caplog, steps_per_call, signal_step, stopped_after, served
):
    """The speed path stops after the step the signal came in, wherever that is in its group; the resumed run equals the reference bit for bit.

    (The reference trains with 2 steps per call: grouping changes no weight and no logged value.)
    """
    grouping = f"--model.steps_per_call={steps_per_call}"
    signal_at = [
        "--trainer.callbacks+=faulthelpers.SignalAtStep",
        f"--trainer.callbacks.step={signal_step}",
        "--trainer.callbacks.signal_name=SIGINT",
    ]
    interrupted = mlplab_in_process(workdir, monkeypatch, capsys, "fit", *tiny_args(), grouping, *signal_at)
    output = interrupted.stdout + interrupted.stderr + caplog.text  # (Lightning's info lines go to its logger)
    assert interrupted.returncode == 1 and f"interrupted in epoch 1 after optimizer step {stopped_after}" in output, output[-3000:]
    saved = torch.load(workdir / "logs/tiny/version_0/checkpoints/last.ckpt", weights_only=True)
    assert saved["global_step"] == stopped_after and saved["TinyDataModule"]["train_position"] == {"epoch": 1, "batches_served": served}
    resumed = mlplab_in_process(workdir, monkeypatch, capsys, "fit", *tiny_args(), grouping, "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_training(reference, final_state(workdir, 0))


@pytest.mark.slow  # (real processes, killed or signalled)
def test_sigterm_mid_epoch_saves_a_checkpoint_exits_143_and_resumes_exactly(workdir, reference):
    """What SLURM or Kubernetes send before killing a preempted job: the job must not look finished."""
    terminated = mlplab(
        workdir, "fit", *tiny_args(), "--trainer.callbacks+=faulthelpers.SignalAtStep", "--trainer.callbacks.step=10",
        "--trainer.callbacks.signal_name=SIGTERM",
    )  # fmt: skip
    output = terminated.stdout + terminated.stderr
    assert terminated.returncode == 143, output[-3000:]
    assert "mlplab: SIGTERM: interrupted in epoch 1 after optimizer step 11; saved logs/tiny/version_0/checkpoints/last.ckpt" in output
    saved = torch.load(workdir / "logs/tiny/version_0/checkpoints/last.ckpt", weights_only=True)
    assert saved["global_step"] == 11 and saved["TinyDataModule"]["train_position"] == {"epoch": 1, "batches_served": 4}
    assert not list((workdir / "logs/tiny/version_0/checkpoints").glob("*.tmp*"))
    resumed = mlplab(workdir, "fit", *tiny_args(), "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_training(reference, final_state(workdir, 0))


def test_a_damaged_last_checkpoint_is_named_with_the_checkpoints_that_do_load(workdir, monkeypatch, capsys):
    first = mlplab_in_process(workdir, monkeypatch, capsys, "fit", *tiny_args(2), "--test_after_fit=false")
    assert first.returncode == 0, first.stderr[-3000:]
    folder = workdir / "logs/tiny/version_0/checkpoints"
    best = [p.name for p in folder.glob("epoch*.ckpt")]
    last = folder / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # truncated, as by a full disk without atomic writes
    line = error_paragraph(mlplab_in_process(workdir, monkeypatch, capsys, "fit", *tiny_args(2), "--ckpt_path=last"))
    assert "ckpt_path='logs/tiny/version_0/checkpoints/last.ckpt' is not a readable checkpoint (truncated" in line
    assert f"Checkpoints in logs/tiny/version_0/checkpoints that do load: {', '.join(sorted(best))}." in line
    assert sorted(p.name for p in (workdir / "logs/tiny").iterdir()) == ["version_0"]  # never a silent fresh start


def test_unreadable_checkpoint_file_says_what_is_wrong_with_it(tmp_path):
    empty, text = tmp_path / "empty.ckpt", tmp_path / "notes.ckpt"
    empty.touch()
    text.write_text("not a checkpoint")
    with pytest.raises(
        ConfigError, match=r"empty.ckpt' is not a readable checkpoint .*: EOFError after 0 bytes\. No other checkpoint in .* loads\.$"
    ):
        check_checkpoint_file(empty)
    with pytest.raises(ConfigError, match=r"notes.ckpt' was refused: .*\(Unsupported operand \d+\)\. Either it is not a PyTorch file"):
        check_checkpoint_file(text)


@pytest.mark.slow  # (real processes, killed or signalled)
def test_checkpoint_write_killed_midway_keeps_the_previous_file(tmp_path):
    path = tmp_path / "last.ckpt"
    script = textwrap.dedent(f"""
        import os, signal, torch
        from mlplab.checkpointing import AtomicCheckpointIO
        io = AtomicCheckpointIO()
        io.save_checkpoint({{"weights": torch.ones(1000)}}, {str(path)!r})
        def dies_while_writing(descriptor):  # the new bytes are written but not yet on disk nor renamed
            os.kill(os.getpid(), signal.SIGKILL)
        os.fsync = dies_while_writing
        io.save_checkpoint({{"weights": torch.zeros(1000)}}, {str(path)!r})
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL
    assert torch.equal(torch.load(path, weights_only=True)["weights"], torch.ones(1000))  # the old copy, whole
    assert [p.name for p in tmp_path.glob("*.ckpt")] == ["last.ckpt"]  # the partial write is not a .ckpt anyone would pick up


# ---------------------------------------------------------------- safe loading


@pytest.fixture
def trained_checkpoint(tmp_path_factory, monkeypatch, capsys) -> Path:
    """The last.ckpt of one epoch on the tiny data, trained once per test session (tests only read it)."""

    def produce(folder: Path) -> dict:
        prepare_workdir(folder)
        with monkeypatch.context() as scoped:  # (the fit's working folder and sys.path only while it runs)
            result = mlplab_in_process(folder, scoped, capsys, "fit", *tiny_args(1))
        assert result.returncode == 0, result.stderr[-3000:]
        return {"last": str(folder / "logs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt")}

    return Path(once_per_session(tmp_path_factory, "trained_checkpoint", produce)["last"])


class RunsCode:
    """Unpickling this runs a shell command: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_that_runs_code_on_load_is_refused(workdir, trained_checkpoint, monkeypatch, capsys):
    marker = workdir / "pwned"
    evil = workdir / "evil.ckpt"
    checkpoint = torch.load(trained_checkpoint, weights_only=True)
    checkpoint["hyper_parameters"]["payload"] = RunsCode(marker)
    torch.save(checkpoint, evil, pickle_protocol=pickle.HIGHEST_PROTOCOL)

    message = error_paragraph(mlplab_in_process(workdir, monkeypatch, capsys, "test", *tiny_args(1), f"--ckpt_path={evil}"))
    assert "was refused" in message and "could run code" in message and "Unsupported operand" in message
    resumed = error_paragraph(mlplab_in_process(workdir, monkeypatch, capsys, "fit", *tiny_args(1), f"--ckpt_path={evil}"))
    assert "was refused" in resumed
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        LitMLP.load_from_checkpoint(evil)
    assert not marker.exists()  # nothing ran


def test_checkpoint_of_another_shape_names_the_mismatching_layers(workdir, trained_checkpoint):
    state = torch.load(trained_checkpoint, weights_only=True)["state_dict"]
    messages = []
    for load in (
        lambda: LitMLP(hidden_dims=[8]).load_state_dict(state),
        lambda: LitMLP.load_from_checkpoint(trained_checkpoint, hidden_dims=[8]),
    ):
        with pytest.raises(ConfigError) as refused:
            load()
        messages.append(str(refused.value))
    for message in messages:
        assert "net.hidden.0.branch.0.weight is [16, 784] in the checkpoint but [8, 784] in this model" in message, message
        assert "net.output.weight is [10, 16] in the checkpoint but [10, 8] in this model" in message, message


# ---------------------------------------------------------------- concurrency


@pytest.mark.slow  # (real processes, killed or signalled)
def test_two_runs_started_together_get_distinct_folders(workdir):
    runs = [mlplab(workdir, "fit", *tiny_args(2), wait=False) for _ in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    versions = sorted(p.name for p in (workdir / "logs" / "tiny").iterdir())
    assert versions == ["version_0", "version_1"]
    for version in versions:
        checkpoints = workdir / "logs" / "tiny" / version / "checkpoints"
        assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 14
        assert (workdir / "logs" / "tiny" / version / "config.yaml").is_file()
    shutil.rmtree(workdir / "logs")


REFUSED_COMMANDS = {
    "fit, bad value": ["fit", *tiny_args(1), "--model.dropout=2"],
    "fit, damaged checkpoint": ["fit", *tiny_args(1), "--ckpt_path=broken.ckpt"],
    "validate, missing checkpoint": ["validate", *tiny_args(1), "--ckpt_path=missing.ckpt"],
    "test, unknown key": ["test", *tiny_args(1), "--model.dropot=0.1"],
    "predict, empty predict_dir": ["predict", *tiny_args(1), "--data.predict_dir=empty", "--prediction_writer.output=p.csv"],
    "export, damaged checkpoint": ["export", "--ckpt_path=broken.ckpt", "--format=onnx", "--output=model.onnx"],
    "tune, bad space": ["tune", "--space=space.yaml", "--study=s", "--n_trials=2", "--launch=process", *tiny_args(1)],
}


@pytest.mark.parametrize("case", REFUSED_COMMANDS)
def test_a_refused_command_of_any_kind_leaves_no_folder_and_no_partial_file(workdir, monkeypatch, capsys, case):
    (workdir / "broken.ckpt").write_bytes(b"PK\x03\x04 truncated")
    (workdir / "empty").mkdir()
    (workdir / "space.yaml").write_text("model.dropout: {type: float, low: 0.5, high: 0.1}\n")
    before = sorted(p.relative_to(workdir) for p in workdir.rglob("*") if "__pycache__" not in p.parts)
    # (`mlplab tune --launch process` starts nothing before it refuses: it too runs in this process)
    error_paragraph(mlplab_in_process(workdir, monkeypatch, capsys, *REFUSED_COMMANDS[case]))
    assert sorted(p.relative_to(workdir) for p in workdir.rglob("*") if "__pycache__" not in p.parts) == before


DDP = ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu", "--test_after_fit=false"]


@pytest.fixture
def ddp_reference(tmp_path_factory) -> tuple[dict, dict]:
    """One uninterrupted two-process run that each signalled-then-resumed one must equal."""
    return uninterrupted(tmp_path_factory, "ddp_reference", *DDP)


@pytest.mark.slow
@pytest.mark.parametrize(("signal_name", "rank", "status"), [("SIGTERM", 1, 143), ("SIGINT", 0, 1)])
def test_a_signal_to_one_ddp_rank_stops_every_rank_after_the_same_step_and_resumes_exactly(
    workdir, ddp_reference, signal_name, rank, status
):
    """Two CPU processes (gloo): whichever rank receives the signal, both save one mid-epoch last.ckpt and stop together."""
    interrupted = mlplab(
        workdir, "fit", *tiny_args(), *DDP, "--trainer.callbacks+=faulthelpers.SignalAtStep", "--trainer.callbacks.step=6",
        f"--trainer.callbacks.signal_name={signal_name}", f"--trainer.callbacks.rank={rank}", timeout=300,
    )  # fmt: skip
    output = interrupted.stdout + interrupted.stderr
    assert interrupted.returncode == status, output[-3000:]
    assert (
        f"mlplab: {signal_name}: interrupted in epoch 1 after optimizer step 7; saved logs/tiny/version_0/checkpoints/last.ckpt" in output
    )
    saved = torch.load(workdir / "logs/tiny/version_0/checkpoints/last.ckpt", weights_only=True)
    assert saved["global_step"] == 7 and saved["TinyDataModule"]["train_position"]["batches_served"] == 3  # mid-epoch
    resumed = mlplab(workdir, "fit", *tiny_args(), *DDP, "--ckpt_path=last", timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_training(ddp_reference, final_state(workdir, 0))


def slurm_environment(workdir: Path) -> dict[str, str]:
    """What ``sbatch`` sets for a one-task job (Lightning then picks its SLURMEnvironment), and a stand-in ``scontrol`` on PATH."""
    bin_dir = workdir / "bin"
    bin_dir.mkdir(exist_ok=True)
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {workdir / "scontrol.log"}\n')
    scontrol.chmod(0o755)
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "mlplab", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost",
    }  # fmt: skip


@pytest.mark.slow
def test_slurm_requeue_signal_saves_lightnings_hpc_checkpoint_requeues_and_the_requeued_job_resumes_exactly(
    workdir, reference, monkeypatch
):
    """Lightning's SLURM integration under mlplab: SIGUSR1 (``#SBATCH --signal=SIGUSR1@90``) -> hpc_ckpt_1.ckpt + scontrol requeue."""
    for key, value in slurm_environment(workdir).items():
        monkeypatch.setenv(key, value)
    signalled = mlplab(
        workdir, "fit", *tiny_args(), "--test_after_fit=false", "--trainer.callbacks+=faulthelpers.SignalAtStep",
        "--trainer.callbacks.step=10", "--trainer.callbacks.signal_name=SIGUSR1",
    )  # fmt: skip
    assert signalled.returncode == 0, signalled.stderr[-3000:]  # (on a cluster, SLURM ends the job once it is requeued)
    assert (workdir / "scontrol.log").read_text() == "requeue 4242\n"
    hpc = torch.load(workdir / "hpc_ckpt_1.ckpt", weights_only=True)  # in trainer.default_root_dir: the job's folder
    # saved when the step the signal interrupted had ended (Lightning alone saves before it, with its batch counted as served)
    assert hpc["global_step"] == 11 and hpc["TinyDataModule"]["train_position"] == {"epoch": 1, "batches_served": 4}
    requeued = mlplab(workdir, "fit", *tiny_args(), "--test_after_fit=false")  # the job's unchanged command, run again
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    assert "hpc_ckpt_1.ckpt" in requeued.stdout + requeued.stderr  # Lightning: "Restoring states from the checkpoint path at …"
    (ref_ckpt, ref_scalars), (ckpt, scalars) = reference, final_state(workdir, 1)
    assert ckpt["global_step"] == ref_ckpt["global_step"]
    for key, value in ref_ckpt["state_dict"].items():
        assert torch.equal(value, ckpt["state_dict"][key]), key  # bit for bit
    for tag, values in scalars.items():  # the requeued job's own run logs from step 11 on, with the same values
        assert values == {step: ref_scalars[tag][step] for step in values}, tag
