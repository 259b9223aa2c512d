"""Config errors name their source: the YAML file and line, the key and the file it came from, the nearest valid key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlplab.cli import MLPLabCLI
from mlplab.cli.config_sources import config_files, dotted_keys, nearest
from mlplab.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
BASE = ["--config", str(ROOT / "configs" / "mnist.yaml")]


def refused(tmp_path: Path, text: str | None, *extra: str) -> str:
    args = list(BASE)
    if text is not None:
        path = tmp_path / "extra.yaml"
        path.write_text(text)
        args += ["--config", str(path)]
    with pytest.raises(ConfigError) as err:
        MLPLabCLI(args=[*args, *extra], run=False)
    message = str(err.value)
    assert "Union subtypes" not in message and "NestedArg" not in message and "\n" not in message
    return message


def test_yaml_syntax_error_names_the_file_and_line(tmp_path):
    message = refused(tmp_path, "trainer:\n  max_epochs: [1, 2\n")
    assert message.startswith(f"config file '{tmp_path / 'extra.yaml'}' is not valid YAML, line 3, column 1:")
    assert "flow sequence that starts at line 2, column 15" in message


def test_a_config_file_that_is_not_a_mapping_is_named(tmp_path):
    assert "must be a mapping of options" in refused(tmp_path, "- trainer\n- model\n")


@pytest.mark.parametrize(
    ("text", "extra", "key", "source", "guess"),
    [
        ("modle:\n  hidden_dims: [10]\n", [], "modle.hidden_dims", "config file", "model"),
        ("trainer:\n  max_epochz: 3\n", [], "trainer.max_epochz", "config file", "trainer.max_epochs"),
        ("model:\n  dropot: 0.1\n", [], "model.dropot", "config file", "model.dropout"),
        (None, ["--model.dropot=0.1"], "model.dropot", "the command line", "model.dropout"),
        (None, ["--erly_stopping.patience=3"], "erly_stopping.patience", "the command line", "early_stopping"),
    ],
)
def test_unknown_key_names_itself_its_source_and_the_nearest_valid_key(tmp_path, text, extra, key, source, guess):
    message = refused(tmp_path, text, *extra)
    assert message.startswith(f"`{key}` (from {source}") and f"Did you mean `{guess}`?" in message
    if text is not None:
        assert str(tmp_path / "extra.yaml") in message


def test_no_data_module_is_one_sentence_listing_the_data_modules(tmp_path):
    path = tmp_path / "model_only.yaml"
    path.write_text("model:\n  hidden_dims: [10]\n")
    with pytest.raises(ConfigError, match=r"^no data module is set: .* data modules: FashionMNISTDataModule, .*MNISTDataModule"):
        MLPLabCLI(args=["--config", str(path)], run=False)


def test_helpers():
    assert config_files(["fit", "--config", "a.yaml", "--config=b.yaml", "--trainer.max_epochs=1"]) == ["a.yaml", "b.yaml"]
    assert set(dotted_keys({"model": {"class_path": "x", "init_args": {"dropout": 0.1}}, "seed_everything": 1})) == {
        "model.class_path",
        "model.dropout",
        "seed_everything",
    }
    assert nearest("dat.batch_size", ["trainer", "model", "data"]) == "data"
    assert nearest("zzz", ["trainer", "model", "data"]) is None
