"""The variants file of ``mlplab compare``: named variants of a base config, or a grid of values crossed.

::

    # named variants: config files to compose and/or `key: value` overrides (the keys `mlplab fit` takes)
    sgd: {model.optimizer: SGD, model.optimizer.init_args.lr: 0.1}
    adam:
      config: [optim/adam]            # presets by name, or files (relative to the working folder)
      model.optimizer.init_args.lr: 0.001

    # or a grid: every combination of the listed values is a variant ("activation=relu,batch_norm=true")
    grid:
      model.activation: [relu, sigmoid]
      model.batch_norm: [false, true]

The file is refused as a whole, naming the file, variant and key, for: no variant, two variants of
one name, a variant that sets the seed (``--seeds`` does), a name that cannot be a folder name, a
value that is not a mapping; the config itself then checks every key and value (mlplab.tune.compare).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any

import yaml

from mlplab.cli.config_sources import dotted_keys, read_config_file
from mlplab.errors import ConfigError
from mlplab.presets import resolve
from mlplab.tune.space import as_override, read_yaml_option

CONFIG_KEYS = ("config", "configs")  # a variant's files to compose, in order
# what a variant may not set: each run's seed comes from --seeds (initial weights, split, shuffle, augmentation)
SEED_KEYS = ("seed_everything", "data.seed", "data.init_args.seed")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.,=+-]*$")


@dataclass(frozen=True)
class Variant:
    """One variant: its name (its runs' folder), the config files it adds and its overrides."""

    name: str
    configs: tuple[str, ...]
    overrides: tuple[tuple[str, Any], ...]

    def fit_arguments(self) -> list[str]:
        """What the variant adds to ``mlplab fit``'s arguments after the base config."""
        return [*(f"--config={path}" for path in self.configs), *(as_override(key, value) for key, value in self.overrides)]


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that repeats a key (plain YAML keeps the last one silently)."""


def _construct_unique_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(
                f"the key {key!r} appears twice (lines {seen[key]} and {key_node.start_mark.line + 1}){{where}}; "
                "each variant (and each key of a variant) needs its own name."
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def load_variants(path: str) -> list[Variant]:
    """The variants of ``path``; ConfigError naming the file, the variant and the key for anything malformed."""
    try:
        raw = read_yaml_option("--variants", path, UniqueKeyLoader)
    except ConfigError as err:  # (a repeated key: the loader's message leaves the file to name here)
        raise ConfigError(str(err).replace("{where}", f" in --variants {path!r}")) from err
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(
            f"--variants {path!r} names no variant; give `NAME: {{key: value, ...}}` for each variant "
            "(or `grid: {key: [value, ...], ...}`), for example `sgd: {model.optimizer: SGD}`."
        )
    variants = grid_variants(raw["grid"], path) if set(raw) == {"grid"} else [parse_variant(str(n), spec, path) for n, spec in raw.items()]
    for variant in variants:
        check_variant(variant, path)
    return variants


def parse_variant(name: str, spec: Any, path: str) -> Variant:
    where = f"--variants {path!r}, variant {name!r}"
    if name == "grid":
        raise ConfigError(f"{where}: `grid` is the grid form and cannot stand beside named variants; use one form per file.")
    if not NAME.match(name) or name == "aggregate":
        raise ConfigError(
            f"{where}: the name is the folder of its runs, so it may hold letters, digits and _.,=+- "
            "(not starting with one of those, and not `aggregate`, the folder of the averaged runs)."
        )
    if spec is None:
        spec = {}  # (the base config itself, unchanged)
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: {spec!r} is not a mapping; give the config keys it changes, e.g. `{name}: {{model.dropout: 0.5}}`.")
    files = spec.get("config", spec.get("configs", []))
    files = [files] if isinstance(files, str) else files
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise ConfigError(f"{where}: config={files!r} must be a config file (or preset name) or a list of them.")
    overrides = tuple((str(key), value) for key, value in spec.items() if key not in CONFIG_KEYS)
    try:
        configs = tuple(resolve(file) for file in files)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from err
    return Variant(name, configs, overrides)


def grid_variants(grid: Any, path: str) -> list[Variant]:
    """Every combination of the grid's values, named ``key=value,...`` by the keys' last parts."""
    if not isinstance(grid, dict) or not grid or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError(f"--variants {path!r}: grid must map config keys to non-empty lists of values, e.g. `model.dropout: [0.0, 0.5]`.")
    keys = list(grid)
    variants = []
    for values in itertools.product(*(grid[key] for key in keys)):
        name = ",".join(f"{key.rsplit('.', 1)[-1]}={value_name(value)}" for key, value in zip(keys, values, strict=True))
        variants.append(parse_variant(name, dict(zip(keys, values, strict=True)), path))
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ConfigError(
            f"--variants {path!r}: the grid's keys end in the same name, so its variants' names repeat ({names[0]}); use named variants."
        )
    return variants


def value_name(value: Any) -> str:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", text).strip("-") or "none"


def check_variant(variant: Variant, path: str) -> None:
    """ConfigError for a variant that sets the seed, by an override or in one of its config files."""
    where = f"--variants {path!r}, variant {variant.name!r}"
    for key, _ in variant.overrides:
        if key.replace(".init_args.", ".") in SEED_KEYS or key in SEED_KEYS:
            raise ConfigError(
                f"{where}: {key} sets the seed, which --seeds sets for every run (seed_everything and data.seed); leave it out."
            )
    for file in variant.configs:
        content = read_config_file(file) or {}
        keys = set(dotted_keys(content)) if isinstance(content, dict) else set()
        found = sorted(keys & set(SEED_KEYS))
        if found:
            raise ConfigError(
                f"{where}: its config {file!r} sets {', '.join(found)}, which --seeds sets for every run; remove it from that file."
            )
