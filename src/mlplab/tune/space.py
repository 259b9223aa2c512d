"""The search space of ``mlplab tune``: a YAML file mapping dotted config keys to Optuna distributions.

::

    model.optimizer.init_args.lr: {type: float, low: 1.0e-4, high: 3.0e-2, log: true}
    model.hidden_dims: {type: categorical, choices: [[64], [128], [256, 128]]}
    data.batch_size: {type: int, low: 64, high: 512, step: 64}

``choices`` on a float or int parameter makes it a list of values (what the grid sampler needs for
every parameter). Optuna's categorical distributions hold only None/bool/int/float/str, so a choice
that is a list or a mapping is suggested as its JSON text and decoded again for the config.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

from mlplab.errors import ConfigError

TYPES = ("float", "int", "categorical")
ALLOWED_KEYS = {"float": {"type", "low", "high", "log", "step", "choices"}, "int": {"type", "low", "high", "log", "step", "choices"}}
ALLOWED_KEYS["categorical"] = {"type", "choices"}


@dataclass(frozen=True)
class Parameter:
    """One dotted config key and the values a trial may give it."""

    key: str
    type: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None

    def suggest(self, trial: optuna.Trial) -> Any:
        """The value this trial gives the key (Optuna's sampler chooses it)."""
        if self.choices is not None:
            return decode_choice(trial.suggest_categorical(self.key, [encode_choice(c) for c in self.choices]))
        if self.type == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def values_to_check(self) -> list[Any]:
        """The values a config must accept before the first trial: every choice, or both ends of the range."""
        if self.choices is not None:
            return list(self.choices)
        return [int(self.low), int(self.high)] if self.type == "int" else [self.low, self.high]

    def grid_choices(self, source: str) -> list[Any]:
        if self.choices is None:
            raise ConfigError(
                f"{source}: {self.key} has a range (low/high), but --sampler grid needs a list of values: give it `choices: [...]`."
            )
        return [encode_choice(c) for c in self.choices]


def encode_choice(value: Any) -> Any:
    """A choice as Optuna stores it: itself if it is None/bool/int/float/str, else its JSON text."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)


def decode_choice(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        return json.loads(value)
    return value


def as_override(key: str, value: Any) -> str:
    """``--key=value`` as LightningCLI parses it (lists and mappings as JSON, numbers exactly)."""
    text = value if isinstance(value, str) else json.dumps(value)
    return f"--{key}={text}"


def load_space(path: str | Path) -> list[Parameter]:
    """The parameters in ``path``; ConfigError naming the file and the key for anything malformed."""
    source = str(path)
    raw = read_yaml_option("--space", source)
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(
            f"--space {source!r} must map dotted config keys to distributions, e.g. "
            "`model.optimizer.init_args.lr: {type: float, low: 1.0e-4, high: 3.0e-2, log: true}`."
        )
    return [parse_parameter(str(key), spec, source) for key, spec in raw.items()]


def read_yaml_option(option: str, path: str, loader: type[yaml.SafeLoader] = yaml.SafeLoader) -> Any:
    """The YAML of the file an option names (``--space``, ``--variants``); ConfigError naming the option, file and line."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"{option} {path!r} cannot be read: {err.strerror or err}.") from err
    try:
        return yaml.load(text, Loader=loader)  # (a SafeLoader or a subclass of it)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{option} {path!r} is not valid YAML{where}: {getattr(err, 'problem', None) or err}.") from err


def parse_parameter(key: str, spec: Any, source: str) -> Parameter:
    where = f"{source}: {key}"
    if not isinstance(spec, dict) or spec.get("type") not in TYPES:
        found = spec.get("type") if isinstance(spec, dict) else spec
        raise ConfigError(f"{where}: type {found!r} is not allowed; each key needs {{type: float|int|categorical, ...}}.")
    kind = spec["type"]
    unknown = set(spec) - ALLOWED_KEYS[kind]
    if unknown:
        raise ConfigError(
            f"{where}: {', '.join(sorted(unknown))} is not a field of a {kind} parameter; allowed: {', '.join(sorted(ALLOWED_KEYS[kind]))}."
        )
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choices={choices!r} must be a non-empty list of values.")
        wrong = [c for c in choices if kind in ("float", "int") and not _is_number(c, kind)]
        if wrong:
            raise ConfigError(f"{where}: choices {wrong} are not {kind} values.")
        return Parameter(key, kind, choices=tuple(choices))
    if kind == "categorical":
        raise ConfigError(f"{where}: a categorical parameter needs `choices: [...]`.")
    low, high, step, log = spec.get("low"), spec.get("high"), spec.get("step"), bool(spec.get("log", False))
    for name, value in (("low", low), ("high", high)) + ((("step", step),) if step is not None else ()):
        if not _is_number(value, kind):
            raise ConfigError(f"{where}: {name}={value!r} is not a{'n int' if kind == 'int' else ' float'}.")
    if low >= high:
        raise ConfigError(f"{where}: low={low!r} must be below high={high!r}.")
    if log and (low <= 0 or step is not None):
        raise ConfigError(f"{where}: log=true needs low > 0 (got {low!r}) and no step.")
    if step is not None and step <= 0:
        raise ConfigError(f"{where}: step={step!r} must be positive.")
    return Parameter(key, kind, float(low), float(high), None if step is None else float(step), log)


def _is_number(value: Any, kind: str) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) if kind == "int" else math.isfinite(value)


def grid_space(space: Sequence[Parameter], source: str) -> dict[str, list[Any]]:
    """``{key: [values]}`` for Optuna's GridSampler."""
    return {p.key: p.grid_choices(source) for p in space}
