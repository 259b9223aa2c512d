"""The statistics of ``mlplab compare``, from SciPy: a variant's mean, s.d. and Student's t interval; Welch's test of two variants.

A seed is one draw of everything random in a run (initial weights, split, shuffle, dropout,
augmentation), so a variant's runs are a sample of its outcomes and the intervals say how far the
mean of that sample may be from the variant's own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE


@dataclass(frozen=True)
class Summary:
    """A variant's runs: their number, mean, sample s.d. (ddof=1) and the 95 % t interval of the mean (NaN with one run)."""

    n: int
    mean: float
    sd: float
    low: float
    high: float


@dataclass(frozen=True)
class Difference:
    """``mean(a) - mean(b)``, its 95 % Welch interval and Welch's two-sided p-value (NaN when they cannot be computed)."""

    difference: float
    low: float
    high: float
    p: float

    @property
    def told_apart(self) -> bool:
        """Whether the seeds tell the two apart at the 5 % level (p < 0.05)."""
        return not math.isnan(self.p) and self.p < ALPHA


def summarize(values: Sequence[float]) -> Summary:
    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return Summary(len(x), mean, math.nan, math.nan, math.nan)
    sd = float(x.std(ddof=1))
    low, high = stats.t.interval(CONFIDENCE, len(x) - 1, loc=mean, scale=stats.sem(x)) if sd > 0 else (mean, mean)
    return Summary(len(x), mean, sd, float(low), float(high))


def welch(a: Sequence[float], b: Sequence[float]) -> Difference:
    """Welch's t-test of ``a`` against ``b`` (unequal variances), with the interval of the difference of means."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    difference = float(x.mean() - y.mean())
    if len(x) < 2 or len(y) < 2 or (x.std() == 0 and y.std() == 0):
        return Difference(difference, math.nan, math.nan, math.nan)
    result = stats.ttest_ind(x, y, equal_var=False)
    interval = result.confidence_interval(CONFIDENCE)
    return Difference(difference, float(interval.low), float(interval.high), float(result.pvalue))
