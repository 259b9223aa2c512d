"""Presets by name (mlplab.presets), the extras' one-line errors (mlplab.extras), plain hyper-parameters (mlplab.plain_config)."""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Mapping, Sequence

import pytest
import torch

from mlplab import LitMLP
from mlplab.cli import main
from mlplab.errors import ConfigError
from mlplab.plain_config import plain_data
from mlplab.presets import PRESETS_DIR, preset_names, resolve, resolve_preset_arguments
from tests.conftest import ROOT


def test_every_shipped_config_is_a_preset_and_the_package_folder_is_the_repositorys():
    assert PRESETS_DIR.resolve() == (ROOT / "configs").resolve()
    assert "seeds/d2l_fashion_mlp" in preset_names() and "mnist" in preset_names()
    assert len(preset_names()) == len(list((ROOT / "configs").rglob("*.yaml")))


@pytest.mark.parametrize("name", ["seeds/d2l_fashion_mlp", "seeds/d2l_fashion_mlp.yaml", "configs/seeds/d2l_fashion_mlp.yaml"])
def test_a_preset_is_reached_by_name_from_any_folder(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    assert resolve(name) == str(PRESETS_DIR / "seeds" / "d2l_fashion_mlp.yaml")
    assert resolve_preset_arguments(["fit", "--config", name, f"--config={name}", "--space", "tune/fashion_89_space"]) == [
        "fit",
        "--config",
        str(PRESETS_DIR / "seeds" / "d2l_fashion_mlp.yaml"),
        f"--config={PRESETS_DIR / 'seeds' / 'd2l_fashion_mlp.yaml'}",
        "--space",
        str(PRESETS_DIR / "tune" / "fashion_89_space.yaml"),
    ]


def test_a_file_of_that_path_wins_over_the_preset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mnist").write_text("trainer: {max_epochs: 1}\n")
    assert resolve("mnist") == "mnist"
    with pytest.raises(ConfigError, match=r"'\.\./etc/passwd' is neither a file nor one of mlplab's presets"):
        resolve("../etc/passwd")


def test_presets_copy_refuses_to_overwrite(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["presets", "copy", "mnist", "mine.yaml"])
    assert (tmp_path / "mine.yaml").read_text() == (ROOT / "configs" / "mnist.yaml").read_text()
    with pytest.raises(SystemExit) as refused:
        main(["presets", "copy", "fashion_mnist", "mine.yaml"])
    assert refused.value.code == 2
    assert "'mine.yaml' exists already" in capsys.readouterr().err
    assert (tmp_path / "mine.yaml").read_text() == (ROOT / "configs" / "mnist.yaml").read_text()


@pytest.mark.parametrize(
    ("argv", "missing", "extra"),
    [
        (["tune", "--space", "tune/fashion_89_space", "--study", "x"], "optuna", "tune"),
        (["export", "--ckpt_path", "x.ckpt", "--format", "onnx"], "onnx", "export"),
        (["export", "--ckpt_path", "x.ckpt", "--format", "safetensors"], "safetensors", "export"),
    ],
)
def test_a_command_whose_extra_is_missing_names_the_extra_in_one_line(tmp_path, monkeypatch, capsys, argv, missing, extra):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == missing else find_spec(name, *args))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as refused:
        main(argv)
    assert refused.value.code == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("mlplab: error:") and f"pip install 'mlplab[{extra}]'" in errors[0], errors
    assert missing in errors[0] and not list(tmp_path.iterdir())


class FakeListConfig(Sequence):
    """What OmegaConf's ListConfig is to these functions: a Sequence that is not a list."""

    def __init__(self, items):
        self.items = list(items)

    def __getitem__(self, index):
        return self.items[index]

    def __len__(self):
        return len(self.items)


class FakeDictConfig(Mapping):
    def __init__(self, **items):
        self.content = items

    def __getitem__(self, key):
        return self.content[key]

    def __iter__(self):
        return iter(self.content)

    def __len__(self):
        return len(self.content)


def test_config_containers_become_plain_data_and_tuples_stay_tuples():
    value = FakeDictConfig(a=FakeListConfig([1, FakeDictConfig(b=(2, FakeListConfig([3])))]), s="text")
    assert plain_data(value) == {"a": [1, {"b": (2, [3])}], "s": "text"}
    assert type(plain_data(value)["a"]) is list and type(plain_data(value)["a"][1]["b"]) is tuple


def test_litmlp_stores_config_containers_and_partials_as_plain_data(tmp_path):
    optimizer = functools.partial(torch.optim.Adam, lr=0.01, betas=FakeListConfig([0.8, 0.9]))
    model = LitMLP(hidden_dims=FakeListConfig([8, 4]), optimizer=optimizer)
    assert model.hparams.hidden_dims == [8, 4] and type(model.hparams.hidden_dims) is list
    assert model.hparams.optimizer == {"class_path": "torch.optim.adam.Adam", "init_args": {"lr": 0.01, "betas": [0.8, 0.9]}}
    torch.save({"hyper_parameters": dict(model.hparams)}, tmp_path / "h.pt")
    assert torch.load(tmp_path / "h.pt", weights_only=True)["hyper_parameters"]["hidden_dims"] == [8, 4]
