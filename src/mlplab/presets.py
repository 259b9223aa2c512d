"""The shipped configs (the repository's ``configs/``, installed inside the package) reached by name from anywhere.

``mlplab fit --config seeds/d2l_fashion_mlp`` (also for ``--space`` and ``--variants``; or ``seeds/d2l_fashion_mlp.yaml``, or the checkout's
``configs/seeds/d2l_fashion_mlp.yaml``) reads the preset when no such file exists in the working folder:
a file of that path always wins. ``mlplab presets`` lists them, ``mlplab presets copy NAME DEST`` copies one
to edit.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Sequence
from pathlib import Path

from mlplab.errors import ConfigError

# src/mlplab/configs: a link to the checkout's configs/ in a checkout, the files themselves in a built wheel
PRESETS_DIR = Path(__file__).resolve().parent / "configs"
# the options whose value is a config file (--config; tune's --space, compare's --variants)
FILE_OPTIONS = ("--config", "--space", "--variants")


def preset_names() -> list[str]:
    """Every preset's name: its path under ``configs/`` without ``.yaml``."""
    return sorted(path.relative_to(PRESETS_DIR).with_suffix("").as_posix() for path in PRESETS_DIR.rglob("*.yaml"))


def preset_path(name: str) -> Path | None:
    """The preset file ``name`` names (``NAME``, ``NAME.yaml`` or ``configs/NAME.yaml``), or None."""
    stem = name.removeprefix("./").removeprefix("configs/").removesuffix(".yaml")
    path = PRESETS_DIR / f"{stem}.yaml"
    return path if stem and ".." not in Path(stem).parts and path.is_file() else None


def resolve(path: str) -> str:
    """``path`` itself if it exists, else the preset it names; ConfigError when it is neither."""
    if Path(path).exists():
        return path
    preset = preset_path(path)
    if preset is not None:
        return str(preset)
    close = difflib.get_close_matches(path.removeprefix("configs/").removesuffix(".yaml"), preset_names(), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"{path!r} is neither a file nor one of mlplab's presets.{hint} `mlplab presets` lists the presets.")


def resolve_preset_arguments(argv: Sequence[str]) -> list[str]:
    """``argv`` with the value of every ``--config``/``--space`` option that names a preset replaced by the preset's path."""
    resolved = list(argv)
    for index, arg in enumerate(resolved):
        option, equals, value = arg.partition("=")
        if option not in FILE_OPTIONS:
            continue
        if equals:
            resolved[index] = f"{option}={resolve(value)}"
        elif index + 1 < len(resolved) and not resolved[index + 1].startswith("-"):
            resolved[index + 1] = resolve(resolved[index + 1])
    return resolved


def presets_command(argv: Sequence[str]) -> None:
    """``mlplab presets``: list the presets (with each one's first comment line), or copy one to a file."""
    parser = argparse.ArgumentParser(prog="mlplab presets", description="The shipped configs, usable by name: --config NAME.")
    sub = parser.add_subparsers(dest="action")
    sub.add_parser("list", help="List the presets (the default).")
    copy = sub.add_parser("copy", help="Copy a preset to a file, to edit it.")
    copy.add_argument("name")
    copy.add_argument("destination", help="The new file (an existing file is not overwritten).")
    options = parser.parse_args(list(argv))
    if options.action == "copy":
        source = preset_path(options.name)
        if source is None:
            resolve(options.name)  # (raises, naming the nearest presets)
        destination = Path(options.destination)
        if destination.is_dir():
            destination = destination / source.name
        if destination.exists():
            raise ConfigError(f"{str(destination)!r} exists already; give a new file name (mlplab presets copy does not overwrite).")
        from mlplab.data.idx import atomic_write_bytes  # (imports torch: only here, so that resolving a name stays light)

        atomic_write_bytes(destination, source.read_bytes())
        print(f"mlplab: copied preset {options.name} to {destination}", flush=True)
        return
    for name in preset_names():
        first = (PRESETS_DIR / f"{name}.yaml").read_text().splitlines()[:1]
        summary = first[0].lstrip("# ").strip() if first and first[0].startswith("#") else ""
        print(f"{name:32} {summary}".rstrip())
