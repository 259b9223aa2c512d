"""What ``mlplab compare`` writes after its runs, in ``logs/compare/STUDY/``.

- ``results.md`` and ``results.csv``: per variant, the runs finished, the test metric's mean, s.d.
  and 95 % interval, the best validation value, epochs and fit time, best first; each variant
  against the best one (difference, its 95 % interval, Welch's p) and whether the seeds tell them
  apart. ``results.csv`` also holds one row per run (``row`` = ``run``), from which every number
  can be recomputed;
- ``aggregate/VARIANT``: the averaged TensorBoard runs with their margin-chart layout (:mod:`~mlplab.tune.aggregate`);
- ``compare.png``: the headline validation metric's mean ± s.d. per variant, and each run's test value.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # (files only: no display is needed or used)
import matplotlib.pyplot as plt
import optuna
from optuna.trial import TrialState

from mlplab.data.idx import atomic_write, atomic_write_bytes
from mlplab.tune.aggregate import aggregate, read_scalars, write_aggregates
from mlplab.tune.statistics import Difference, Summary, summarize, welch


@dataclass(frozen=True)
class Run:
    """One completed run of the comparison."""

    variant: str
    seed: int
    trial: int
    test: float
    best_val: float
    epochs: int
    fit_seconds: float
    folder: Path


def completed_runs(study: optuna.Study, metric: str) -> list[Run]:
    runs = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        attrs = trial.user_attrs
        test = (attrs.get("test") or {}).get(metric)
        if test is None or "variant" not in trial.params:
            continue
        runs.append(
            Run(
                trial.params["variant"], int(trial.params["seed"]), trial.number, float(test), float(trial.value),
                int(attrs.get("epochs") or 0), float(attrs.get("fit_seconds") or 0.0), Path(attrs["run"]),
            )
        )  # fmt: skip
    return sorted(runs, key=lambda run: (run.variant, run.seed))


def number(value: float, digits: int = 4) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def write_comparison(study: optuna.Study, variants: list[str], options: argparse.Namespace, folder: Path, mode: str) -> int:
    """Write the tables, the averaged runs and the figure; the number of (variant, seed) pairs completed."""
    metric = options.metric
    runs = completed_runs(study, metric)
    by_variant = {variant: [run for run in runs if run.variant == variant] for variant in variants}
    summaries = {variant: summarize([run.test for run in rows]) for variant, rows in by_variant.items() if rows}
    order = sorted(summaries, key=lambda variant: summaries[variant].mean, reverse=mode == "max")
    best = order[0] if order else None
    differences = {
        variant: welch([run.test for run in by_variant[variant]], [run.test for run in by_variant[best]])
        for variant in order
        if variant != best
    }
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(folder / "results.csv", order, by_variant, summaries, differences, metric)
    failed = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        if not str(t.user_attrs.get("reason", "")).startswith("not run:")
    ]
    write_markdown(folder / "results.md", order, by_variant, summaries, differences, options, best, failed)
    if runs:
        scalars = {variant: aggregate(read_scalars(run.folder) for run in rows) for variant, rows in by_variant.items() if rows}
        write_aggregates(folder, scalars)
        draw_figure(folder / "compare.png", order, by_variant, scalars, metric, study.study_name)
    return len({(run.variant, run.seed) for run in runs})


def write_csv(path: Path, order, by_variant, summaries: dict[str, Summary], differences: dict[str, Difference], metric: str) -> None:
    columns = [
        "row", "variant", "seed", "runs", metric, "sd", "ci95_low", "ci95_high", "best_val", "epochs", "fit_seconds",
        "difference_to_best", "difference_ci95_low", "difference_ci95_high", "welch_p", "run",
    ]  # fmt: skip
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for variant in order:
        summary, rows, difference = summaries[variant], by_variant[variant], differences.get(variant)
        writer.writerow(
            {
                "row": "variant", "variant": variant, "runs": summary.n, metric: number(summary.mean, 6), "sd": number(summary.sd, 6),
                "ci95_low": number(summary.low, 6), "ci95_high": number(summary.high, 6),
                "best_val": number(sum(r.best_val for r in rows) / len(rows), 6), "epochs": number(sum(r.epochs for r in rows) / len(rows), 1),
                "fit_seconds": number(sum(r.fit_seconds for r in rows) / len(rows), 2),
                "difference_to_best": number(difference.difference, 6) if difference else "",
                "difference_ci95_low": number(difference.low, 6) if difference else "",
                "difference_ci95_high": number(difference.high, 6) if difference else "",
                "welch_p": number(difference.p, 6) if difference else "",
            }
        )  # fmt: skip
    for variant in order:
        for run in by_variant[variant]:
            writer.writerow(
                {
                    "row": "run", "variant": run.variant, "seed": run.seed, "runs": 1, metric: repr(run.test), "best_val": repr(run.best_val),
                    "epochs": run.epochs, "fit_seconds": number(run.fit_seconds, 2), "run": str(run.folder),
                }
            )  # fmt: skip
    atomic_write_bytes(path, buffer.getvalue().encode())


def write_markdown(path: Path, order, by_variant, summaries, differences, options, best, failed) -> None:
    metric, seeds = options.metric, len(options.seed_list)
    lines = [
        f"# mlplab compare: {options.study}",
        "",
        f"{metric} of each variant's best checkpoint over seeds {', '.join(map(str, options.seed_list))}: mean, sample s.d., "
        "95 % confidence interval of the mean (Student's t); best first.",
        "",
        f"| variant | runs | {metric} mean | s.d. | 95 % CI | best {options.validation_metric} | epochs | fit time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant in order:
        s, rows = summaries[variant], by_variant[variant]
        interval = f"{number(s.low)}–{number(s.high)}" if not math.isnan(s.low) else "(one run)"
        lines.append(
            f"| {variant} | {s.n}/{seeds} | {number(s.mean)} | {number(s.sd)} | {interval} | "
            f"{number(sum(r.best_val for r in rows) / len(rows))} | {sum(r.epochs for r in rows) / len(rows):.1f} | "
            f"{sum(r.fit_seconds for r in rows) / len(rows):.1f} |"
        )
    if differences:
        lines += [
            "",
            f"Each variant against the best one ({best}): difference of the means, its 95 % interval and Welch's t-test p-value.",
            "",
            "| variant | difference | 95 % CI | p | |",
            "|---|---|---|---|---|",
        ]
        for variant, d in differences.items():
            verdict = "worse than the best" if d.told_apart else "the seeds cannot tell it from the best"
            interval = f"{number(d.low)}–{number(d.high)}" if not math.isnan(d.low) else "n/a"
            lines.append(f"| {variant} | {d.difference:+.4f} | {interval} | {number(d.p, 3) or 'n/a'} | {verdict} |")
    if failed:
        lines += ["", "Runs that did not complete (the same command runs them again):", ""]
        lines += [
            f"- trial {t.number} {t.params or t.system_attrs.get('fixed_params')}: {t.user_attrs.get('reason', 'no reason recorded')}"
            for t in failed
        ]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def draw_figure(path: Path, order, by_variant, scalars, metric: str, study: str) -> None:
    """The headline validation curve (mean ± s.d. band) per variant, and every run's final test value as a dot."""
    curve = "val/" + metric.removeprefix("test/")
    figure, (curves, dots) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [2.2, 1]})
    for index, variant in enumerate(order):
        color = f"C{index % 10}"
        steps = scalars[variant].get(curve, {})
        if steps:
            x = sorted(steps)
            mean = [steps[s][0] for s in x]
            sd = [steps[s][1] for s in x]
            curves.plot(x, mean, color=color, label=variant)
            curves.fill_between(
                x, [m - d for m, d in zip(mean, sd, strict=True)], [m + d for m, d in zip(mean, sd, strict=True)], color=color, alpha=0.2
            )
        values = [run.test for run in by_variant[variant]]
        dots.scatter([index] * len(values), values, color=color, s=18)
        dots.hlines(sum(values) / len(values), index - 0.3, index + 0.3, color=color)
    if curve.endswith(("loss", "mse", "mae")):
        curves.set_yscale("log")  # (a loss falls by orders of magnitude; its end is what differs between variants)
    curves.set(xlabel="optimizer step", ylabel=curve, title=f"{study}: {curve}, mean ± s.d. over seeds")
    curves.legend(fontsize="small")
    dots.set_xticks(range(len(order)), order, rotation=45, ha="right", fontsize="small")
    dots.set(ylabel=metric, title=f"{metric} per run (line: mean)")
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=110, format="png"))
    plt.close(figure)
