"""Config errors that name their source: the YAML file and line, the key, the nearest valid key.

jsonargparse reports a YAML syntax error against ``"<unicode string>"``, an unknown key as
``Subcommand 'fit' does not accept option 'modle.hidden_dims'`` and a missing data module as
``the following arguments are required: fit.data``, without saying which of several ``--config``
files holds the problem. These functions read the same files (plain YAML, as jsonargparse does)
to say where it came from and what was probably meant.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch import Trainer

from mlplab.cli.messages import describe_argument_error
from mlplab.errors import ConfigError

SUBCOMMANDS = ("fit", "validate", "test", "predict")


def config_path_at(argv: Sequence[str], index: int) -> str | None:
    """The path that ``argv[index]`` gives with ``--config PATH`` or ``--config=PATH``, else None."""
    arg = argv[index]
    if arg == "--config" and index + 1 < len(argv):
        return argv[index + 1]
    return arg.partition("=")[2] if arg.startswith("--config=") else None


def config_files(argv: Sequence[str]) -> list[str]:
    """The paths given with ``--config PATH`` or ``--config=PATH``, in order."""
    return [path for index in range(len(argv)) if (path := config_path_at(argv, index)) is not None]


def read_config_file(path: str) -> Any:
    """The file's YAML; ConfigError naming the file, line and column of a syntax error."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"--config {path!r} cannot be read: {err.strerror or err}.") from err
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark, context = getattr(err, "problem_mark", None), getattr(err, "context_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        if context is not None and getattr(err, "context", None):
            problem += f" ({err.context} that starts at line {context.line + 1}, column {context.column + 1})"
        raise ConfigError(f"config file {path!r} is not valid YAML{where}: {problem}.") from err


def check_config_files(argv: Sequence[str]) -> None:
    """Refuse a config file that is not valid YAML, or not a mapping of options, before jsonargparse reads it."""
    for path in config_files(argv):
        content = read_config_file(path)
        if content is not None and not isinstance(content, dict):
            raise ConfigError(
                f"config file {path!r} must be a mapping of options (`trainer:`, `model:`, `data:` ...), not {type(content).__name__}."
            )


def dotted_keys(mapping: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """``{"model": {"init_args": {"dropout": 0.1}}}`` -> ``model.dropout`` (``init_args`` levels left out)."""
    for key, value in mapping.items():
        if key == "init_args" and isinstance(value, dict):
            yield from dotted_keys(value, prefix)
        elif isinstance(value, dict) and value and key != "dict_kwargs":
            yield from dotted_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def valid_keys(top_level: Sequence[str]) -> dict[str, list[str]]:
    """Options by section: the top-level keys, the Trainer's, LitMLP's and the data modules' arguments."""
    from mlplab.data.datamodules import DATAMODULES
    from mlplab.lit_mlp import LitMLP

    def arguments(cls: type) -> list[str]:
        return [name for name in inspect.signature(cls.__init__).parameters if name not in ("self", "args", "kwargs")]

    data = sorted({name for module in DATAMODULES.values() for name in arguments(module)})
    return {"": list(top_level), "trainer": arguments(Trainer), "model": arguments(LitMLP), "data": data}


def nearest(key: str, top_level: Sequence[str]) -> str | None:
    """The valid key closest to ``key`` (``modle.hidden_dims`` -> ``model``, ``trainer.max_epoch`` -> ``trainer.max_epochs``)."""
    sections = valid_keys(top_level)
    head, _, rest = key.partition(".")
    if head not in sections[""]:
        match = difflib.get_close_matches(head, sections[""], n=1, cutoff=0.6)
        return match[0] if match else None
    first = rest.partition(".")[0]
    match = difflib.get_close_matches(first, sections.get(head, []), n=1, cutoff=0.6)
    return f"{head}.{match[0]}" if match else None


def source_of(key: str, argv: Sequence[str]) -> str:
    """Where ``key`` was given last (later sources win, as in jsonargparse): a ``--config`` file or the command line."""
    source = "the command line"
    for index, arg in enumerate(argv):
        path = config_path_at(argv, index)
        if path is not None:
            content = read_config_file(path)
            if isinstance(content, dict) and key in set(dotted_keys(content)):
                source = f"config file {path!r}"
        elif arg.startswith("--") and arg[2:].partition("=")[0].replace(".init_args.", ".") == key:
            source = "the command line"
    return source


def unknown_top_level_key(argv: Sequence[str], top_level: Sequence[str]) -> ConfigError | None:
    """A ConfigError for the first key of a config file under a top-level name that is not an option (``modle:``), else None."""
    for path in config_files(argv):
        for key in dotted_keys(read_config_file(path) or {}):
            if key.partition(".")[0] not in top_level:
                guess = nearest(key, top_level)
                hint = f" Did you mean `{guess}`?" if guess else ""
                return ConfigError(
                    f"`{key}` (from config file {path!r}) is not an option of mlplab's config.{hint} `--help` lists every option."
                )
    return None


def data_module_given(argv: Sequence[str]) -> bool:
    """Whether a config file or the command line chooses a data module (``data: {class_path: ...}``, ``--data=NAME``)."""
    if any(arg == "--data" or arg.startswith(("--data=", "--data.class_path")) for arg in argv):
        return True
    files = (read_config_file(path) for path in config_files(argv))
    return any(isinstance(content, dict) and isinstance(content.get("data"), dict) and "class_path" in content["data"] for content in files)


def explain(err: argparse.ArgumentError, argv: Sequence[str], top_level: Sequence[str], data_modules: Sequence[str]) -> Exception:
    """A ConfigError naming the source for the errors above; ``err`` itself for anything else."""
    text = describe_argument_error(err)  # one paragraph, the innermost class option's own reason
    # jsonargparse's wordings: "Subcommand 'fit' does not accept option 'K'", "Group 'trainer' does not accept option
    # 'K'", "Parser key \"model\": Option 'K' is not accepted", "Option 'K' is not accepted", "Unrecognized arguments: --K"
    patterns = (
        r"Group '(?P<group>[\w.]+)' does not accept option '(?P<key>[^']+)'",
        r"does not accept option '(?P<key>[^']+)'",
        r'Parser key "(?P<group>[\w.]+)": Option \'(?P<key>[\w.]+)\' is not accepted',
        r"Option '(?P<key>[\w.]+)' is not accepted",
        r"unrecognized arguments: --?(?P<key>[\w.]+)",
    )
    misspelt = unknown_top_level_key(argv, top_level)
    if misspelt is not None:  # (jsonargparse may stop at a later key first: a typo'd section hides the options in it)
        return misspelt
    if 'Parser key "lr"' in text and "model.optimizer" in text:
        given = re.search(r"lr='([^']*)'", text) or re.search(r"Given value: (\S+?)\.? Got", text)
        value = given[1] if given else "?"
        return ConfigError(
            f"model.optimizer.lr={value} (from {source_of('model.optimizer.lr', argv)}) is not allowed: the learning rate must be "
            "a positive, finite number, such as --model.optimizer.lr=0.1."
        )
    unknown = next((match for pattern in patterns if (match := re.search(pattern, text, re.I))), None)
    if unknown:
        group = unknown.groupdict().get("group")
        key = f"{group}.{unknown['key']}" if group else unknown["key"]
        key = re.sub(r"^(fit|validate|test|predict)\.", "", key.split("=")[0])
        if key.startswith("data.") and not data_module_given(argv):
            return ConfigError(
                f"`{key}` (from {source_of(key, argv)}) is an option of a data module, but no data module is chosen: neither a "
                f"--config file nor the command line gives `data`. Add `--data=NAME` or a config with `data: {{class_path: mlplab.data.NAME}}`; "
                f"data modules: {', '.join(data_modules)}."
            )
        guess = nearest(key, top_level)
        hint = f" Did you mean `{guess}`?" if guess and guess != key else ""
        return ConfigError(f"`{key}` (from {source_of(key, argv)}) is not an option of mlplab's config.{hint} `--help` lists every option.")
    if re.search(r"arguments are required: (?:\w+\.)?data\b", text):
        return ConfigError(
            "no data module is set: neither a --config file nor the command line gives `data`. Add `--data=NAME` or a config "
            f"with `data: {{class_path: mlplab.data.NAME}}`; data modules: {', '.join(data_modules)} (or your own subclass "
            "of mlplab.data.IDXDataModule by import path)."
        )
    return err


# words of Lightning's refusals that concern the machine, not an argument's value
HARDWARE_WORDS = re.compile(r"accelerator|devices?\b|GPU|CUDA|TPU|MPS|XLA|strategy|precision|num_nodes|not installed|No module named", re.I)


def describe_trainer_error(err: Exception, config: dict[str, Any], argv: Sequence[str]) -> ConfigError:
    """Lightning's refusal to build the Trainer as one paragraph: a hardware problem names the machine, a bad argument its key."""
    argument = re.match(r"`(\w+)`", str(err))
    if argument and argument[1] in config and not HARDWARE_WORDS.search(argument[1]):
        key = f"trainer.{argument[1]}"
        return ConfigError(f"{key}={config.get(argument[1])!r} (from {source_of(key, argv)}) is not allowed: {err}")
    if not HARDWARE_WORDS.search(str(err)):
        return ConfigError(f"Lightning's Trainer refused the trainer options: {err}")
    chosen = ", ".join(f"trainer.{key}={config.get(key)!r}" for key in ("accelerator", "devices", "strategy", "precision"))
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ConfigError(
        f"Lightning's Trainer cannot run {chosen} here: {err} This machine has {gpus} CUDA GPU(s) and "
        f"{os.cpu_count()} CPU core(s); trainer.accelerator=cpu (or auto) runs anywhere."
    )
