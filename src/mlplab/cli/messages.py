"""One-paragraph messages for what jsonargparse and LightningCLI report about a bad command line or config."""

from __future__ import annotations

import argparse
import re
from typing import Any

import torch


def _class_names(module: Any, base: type) -> list[str]:
    return sorted(
        name
        for name, value in vars(module).items()
        if isinstance(value, type) and issubclass(value, base) and value is not base and not name.startswith("_")
    )


def describe_argument_error(err: argparse.ArgumentError) -> str:
    """jsonargparse's multi-line explanation as one paragraph, with the allowed names for class options."""
    text = innermost_subclass_error(" ".join(line.strip().lstrip("- ").strip() for line in str(err).splitlines() if line.strip()))
    match = re.search(r'key "([^"]+)"', text)
    key = re.sub(r"^(fit|validate|test|predict)\.", "", match.group(1)) if match else ""
    if key == "model.optimizer":
        text += (
            f" Allowed: any torch.optim optimizer by name or import path ({', '.join(_class_names(torch.optim, torch.optim.Optimizer))})."
        )
    elif key == "model.lr_scheduler":
        schedulers = sorted(set(_class_names(torch.optim.lr_scheduler, torch.optim.lr_scheduler.LRScheduler)) - {"ReduceLROnPlateau"})
        text += (
            f" Allowed: any torch.optim.lr_scheduler class by name or import path ({', '.join(schedulers)}), "
            "torch.optim.lr_scheduler.ReduceLROnPlateau (full path: Lightning has a class of the same name), or mlplab.schedules.WarmupCosineLR."
        )
    if 'Parser key "lr"' in text:
        text += " model.optimizer.lr must be a positive, finite number."
    return text


# jsonargparse's report on a class option (model, data): every branch of its ``Class | None`` union, the class's own first
SUBCLASS_ERROR = re.compile(
    r'Parser key "(?P<key>[\w.]+)": Does not validate against any of the Union subtypes .*? Errors: '
    r"Problem with given class_path '[^']+': (?P<reason>.*?)(?: Expected a <class 'NoneType'>.*)?$"
)


def innermost_subclass_error(text: str) -> str:
    """``Parser key "model": Does not validate ... Parser key "optimizer": X`` -> ``Parser key "model.optimizer": X``."""
    while (match := SUBCLASS_ERROR.search(text)) is not None:
        key, reason = match["key"], match["reason"]
        inner = re.match(r'Parser key "([^"]+)": ', reason)
        text = f'Parser key "{key}.{inner[1]}": {reason[inner.end() :]}' if inner else f'Parser key "{key}": {reason}'
    return text


def describe_instantiation_error(err: ValueError) -> str:
    """A class of the config (a callback, the logger, ...) refused its arguments: its own reason in one paragraph.

    jsonargparse tries every branch of a type union (``list[Callback] | Callback | None``) and
    reports them all, with the constructor's own error first.
    """
    text = str(err)
    head, _, errors = text.partition("Errors:")
    reasons = re.findall(r"^\s*- (.+)$", errors, flags=re.MULTILINE)
    reason = reasons[0] if reasons else (head.strip().splitlines() or ["(no reason given)"])[0]
    classes = list(dict.fromkeys(re.findall(r"class_path='([^']+)'", text)))
    return f"{', '.join(classes) or 'a class in the config'} refused its arguments: {reason}"
