"""The averaged TensorBoard runs of ``mlplab compare``: per variant, per scalar, per step, the mean and mean ± s.d. over its seeds.

TensorBoard has no way to group runs and draw their mean (tensorflow/tensorboard#376); its
maintainers' advice is to read the runs' event files and write the aggregate as runs of their own.
That is what this does: ``aggregate/VARIANT`` holds ``TAG/mean``, ``TAG/lower``, ``TAG/upper``
(mean ∓ sample s.d. over the seeds that reached that step) and ``TAG/runs`` (how many did), and a
Custom Scalars layout of margin charts (value, lower, upper), so that one chart per metric draws one
band per variant. Each run's event files are read once, every tag in that one pass.
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard.summary import custom_scalars
from torch.utils.tensorboard.writer import FileWriter

AGGREGATE = "aggregate"
CATEGORY = "mlplab compare: mean ± s.d. over seeds"
SUFFIXES = ("mean", "lower", "upper", "runs")

# tag -> step -> value, for one run
RunScalars = dict[str, dict[int, float]]


def read_scalars(run_dir: Path) -> RunScalars:
    """Every scalar of the run's event files, read in one pass; the last value written at a step wins (as TensorBoard draws it)."""
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0, "images": 1, "histograms": 1})
    accumulator.Reload()
    return {tag: {event.step: event.value for event in accumulator.Scalars(tag)} for tag in accumulator.Tags()["scalars"]}


def aggregate(runs: Iterable[RunScalars]) -> dict[str, dict[int, tuple[float, float, int]]]:
    """tag -> step -> (mean, sample s.d. (0 for one run), runs that reached the step) over ``runs``."""
    values: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        for tag, steps in run.items():
            for step, value in steps.items():
                values[tag][step].append(value)
    result: dict[str, dict[int, tuple[float, float, int]]] = {}
    for tag, steps in values.items():
        result[tag] = {}
        for step in sorted(steps):
            x = np.asarray(steps[step], dtype=float)
            result[tag][step] = (float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0, len(x))
    return result


def charted(tag: str) -> bool:
    """Whether a tag is a metric worth a band: a train/val/test metric or a learning rate (not counters, hp_metric, tune/)."""
    return tag.startswith(("train/", "val/", "test/", "lr-")) and not tag.startswith("train/optimizer_steps") and not tag.endswith("_best")


def margin_layout(tags: Iterable[str]) -> dict[str, dict[str, list]]:
    """One margin chart per metric: the mean, drawn with its lower and upper values as a band."""
    metrics = sorted(tag for tag in tags if charted(tag))
    return {CATEGORY: {tag: ["Margin", [f"{tag}/mean", f"{tag}/lower", f"{tag}/upper"]] for tag in metrics}}


def write_aggregates(folder: Path, per_variant: dict[str, dict[str, dict[int, tuple[float, float, int]]]]) -> Path:
    """``folder/aggregate/VARIANT`` event files (written beside, then moved into place: a rerun replaces the last ones whole)."""
    target, scratch = folder / AGGREGATE, folder / f".{AGGREGATE}.tmp"
    shutil.rmtree(scratch, ignore_errors=True)
    tags = {tag for tag_steps in per_variant.values() for tag in tag_steps}
    layout = margin_layout(tags)
    for variant, tag_steps in per_variant.items():
        # one event per step holding every tag's four values (SummaryWriter.add_scalar writes one event per value:
        # about 70 µs each, seconds for a comparison's long runs)
        by_step: dict[int, list[Summary.Value]] = defaultdict(list)
        for tag, steps in tag_steps.items():
            for step, (mean, sd, count) in steps.items():
                for suffix, value in zip(SUFFIXES, (mean, mean - sd, mean + sd, count), strict=True):
                    by_step[step].append(Summary.Value(tag=f"{tag}/{suffix}", simple_value=value))
        writer = FileWriter(str(scratch / variant))
        writer.add_summary(custom_scalars(layout))
        for step in sorted(by_step):
            writer.add_summary(Summary(value=by_step[step]), step)
        writer.close()
    shutil.rmtree(target, ignore_errors=True)
    scratch.rename(target)
    return target
