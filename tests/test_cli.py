"""The mlplab command: every config parses, defaults and switches, errors, the data command."""

import subprocess
import sys

import pytest
import torch
import yaml

from mlplab.cli import main
from tests.conftest import MLPLAB, REAL_DATA_DIR, ROOT

# every config and fragment (configs/tune/ holds search spaces for `mlplab tune`, configs/variants/ the variants files of `mlplab compare`: not configs)
CONFIGS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").rglob("*.yaml") if p.parent.name not in ("tune", "variants"))


def print_config(capsys, *args: str) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("config", CONFIGS)
def test_print_config_succeeds_for_every_config(config, capsys, scratch_checkout):
    """Full configs parse alone; fragments (no `data:`) compose onto configs/mnist.yaml and take effect."""
    fragment = yaml.safe_load((ROOT / config).read_text())
    base = [] if "class_path" in fragment.get("data", {}) else ["--config", "configs/mnist.yaml"]
    printed = print_config(capsys, *base, "--config", config)
    assert printed["data"]["class_path"].startswith("mlplab.data.")
    for key in ("optimizer", "lr_scheduler"):
        if base and key in fragment.get("model", {}):
            assert printed["model"]["init_args"][key]["class_path"] == fragment["model"][key]["class_path"]
            assert (
                printed["model"]["init_args"][key]["init_args"] | fragment["model"][key]["init_args"]
                == printed["model"]["init_args"][key]["init_args"]
            )


def test_defaults_callbacks_logger_and_seed(capsys, scratch_checkout):
    printed = print_config(capsys, "--config", "configs/mnist.yaml")
    assert printed["seed_everything"] == 42
    assert printed["checkpoint"]["init_args"] | {"monitor": "val/acc", "mode": "max"} == printed["checkpoint"]["init_args"]
    assert printed["last_checkpoint"]["init_args"] | {"monitor": None, "filename": "last"} == printed["last_checkpoint"]["init_args"]
    assert printed["early_stopping"]["init_args"]["monitor"] == "val/loss" and printed["early_stopping"]["init_args"]["patience"] == 5
    assert printed["early_stopping"]["init_args"]["check_on_train_epoch_end"] is False  # checked after validation only
    assert printed["lr_monitor"]["class_path"].endswith("LearningRateMonitor")
    assert printed["trainer"]["logger"]["init_args"]["save_dir"] == "logs"
    assert printed["test_after_fit"] is True


def test_configs_compose_and_command_line_overrides(capsys, scratch_checkout):
    printed = print_config(
        capsys,
        "--config",
        "configs/fashion_mnist.yaml",
        "--config",
        "configs/seeds/d2l_fashion_mlp.yaml",
        "--model.optimizer=SGD",
        "--model.optimizer.lr=0.05",
    )
    assert printed["model"]["init_args"]["optimizer"]["class_path"] == "torch.optim.SGD"
    assert printed["model"]["init_args"]["optimizer"]["init_args"]["lr"] == 0.05
    assert printed["early_stopping"] is None and printed["model"]["init_args"]["hidden_dims"] == [256]


def test_bad_value_gives_one_paragraph_and_nonzero_exit(tmp_path):
    result = subprocess.run(
        [MLPLAB, "fit", "--config", str(ROOT / "configs/mnist.yaml"), "--model.activation=swish", f"--data.data_dir={tmp_path}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "mlplab: error: model.activation='swish' is not a known activation; allowed: relu, leaky_relu, elu, gelu, sigmoid, tanh, identity, maxout."
    )
    assert "Traceback" not in result.stderr


def test_data_download_verifies_present_files(real_mnist, capsys):
    main(["data", "download", "--dataset", "mnist", "--data_dir", str(REAL_DATA_DIR), "--source", "registry"])
    assert capsys.readouterr().out.strip() == f"mlplab: MNIST ready in {real_mnist} (4 files, MD5 verified)"


def test_trainer_callbacks_follow_the_config(scratch_checkout, monkeypatch):
    """Null groups leave their callback out; switching the progress bar off removes the default one."""
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, ProgressBar

    from mlplab.callbacks import TrainBatchImageGrid
    from mlplab.cli import MLPLabCLI

    monkeypatch.setattr(sys, "argv", ["mlplab"])
    cli = MLPLabCLI(
        args=[
            "--config",
            "configs/seeds/d2l_fashion_mlp.yaml",
            "--trainer.enable_progress_bar=false",
            "--trainer.logger=false",
            "--lr_monitor=null",
        ],
        run=False,
    )
    kinds = {type(c) for c in cli.trainer.callbacks}
    assert ModelCheckpoint in kinds and TrainBatchImageGrid in kinds
    assert EarlyStopping not in kinds and LearningRateMonitor not in kinds
    assert not any(isinstance(c, ProgressBar) for c in cli.trainer.callbacks)
    assert cli.model.hparams.steps_per_call == 64 and cli.model.hparams.num_classes == 10


def test_switching_logger_and_checkpointing_off_leaves_out_the_callbacks_that_need_them(scratch_checkout, monkeypatch):
    # Lightning refuses a LearningRateMonitor without a logger and a ModelCheckpoint with enable_checkpointing=False;
    # without a logger LightningCLI would write config.yaml into the current folder, once
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.cli import SaveConfigCallback

    from mlplab.cli import MLPLabCLI

    monkeypatch.setattr(sys, "argv", ["mlplab"])
    cli = MLPLabCLI(args=["--config", "configs/mnist.yaml", "--trainer.logger=false", "--trainer.enable_checkpointing=false"], run=False)
    assert cli.trainer.logger is None and cli.trainer.checkpoint_callback is None
    assert not any(isinstance(c, (LearningRateMonitor, ModelCheckpoint, SaveConfigCallback)) for c in cli.trainer.callbacks)


def test_weight_averaging_callback_from_the_command_line(scratch_checkout, monkeypatch):
    # the README's EMA switch: a callback appended to mlplab's defaults, with its own arguments
    from lightning.pytorch.callbacks import ModelCheckpoint

    from mlplab import FusedEMAWeightAveraging
    from mlplab.cli import MLPLabCLI

    monkeypatch.setattr(sys, "argv", ["mlplab"])
    cli = MLPLabCLI(
        args=[
            "--config",
            "configs/mnist.yaml",
            "--trainer.logger=false",
            "--trainer.callbacks+=mlplab.FusedEMAWeightAveraging",
            "--trainer.callbacks.decay=0.99",
        ],
        run=False,
    )
    [ema] = [c for c in cli.trainer.callbacks if isinstance(c, FusedEMAWeightAveraging)]
    average = [torch.zeros(1)]
    ema._kwargs["multi_avg_fn"](average, [torch.ones(1)], 1)
    assert average[0].item() == pytest.approx(0.01)
    assert any(isinstance(c, ModelCheckpoint) for c in cli.trainer.callbacks)


def test_a_callback_refusing_its_arguments_gives_one_paragraph(capsys, scratch_checkout, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                "--config",
                "configs/mnist.yaml",
                f"--data.data_dir={REAL_DATA_DIR}",
                f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
                "--trainer.callbacks+=lightning.pytorch.callbacks.EMAWeightAveraging",
                "--trainer.callbacks.decay=1.5",
            ]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (
        "mlplab: error: lightning.pytorch.callbacks.EMAWeightAveraging refused its arguments: "
        "Invalid decay value 1.5 provided. Please provide a value in [0,1] range."
    )
    assert not (tmp_path / "runs").exists()  # the claimed version folder and the logs/<name>/ it created were removed


def test_instantiation_error_without_union_report_or_message():
    from mlplab.cli import describe_instantiation_error

    assert describe_instantiation_error(ValueError("bad size\nmore")) == "a class in the config refused its arguments: bad size"
    assert describe_instantiation_error(ValueError()) == "a class in the config refused its arguments: (no reason given)"


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("--model.optimizer=Sgdd", ["model.optimizer", "Sgdd", "Allowed: any torch.optim optimizer", "SGD", "LBFGS"]),
        ("--model.lr_scheduler=StepLRR", ["model.lr_scheduler", "StepLRR", "StepLR", "OneCycleLR", "WarmupCosineLR"]),
        ("--trainer.max_epochs=abc", ["trainer.max_epochs", "abc"]),
    ],
)
def test_parse_errors_are_one_paragraph_naming_option_and_value(capsys, scratch_checkout, option, expected):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "configs/mnist.yaml", option])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlplab: error: ")
    assert all(word in lines[0] for word in expected), lines[0]
