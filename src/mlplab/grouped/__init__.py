"""The speed path (several batches per fetch, one optimizer step each) and every private Lightning API mlplab uses.

- :mod:`mlplab.grouped.loop`: :class:`~mlplab.grouped.loop.GroupedTrainingEpochLoop`, Lightning's
  epoch loop taking its batches from groups (imported only by a fit that takes the speed path);
- :mod:`mlplab.grouped.steps`: :class:`GroupedSteps`, the LightningModule mixin that decides
  whether a fit groups and takes the optimizer step itself (manual optimization);
- :mod:`mlplab.grouped.counters`: the two private Lightning flags the ``mlplab`` command sets
  (the loggers' step, the hparams logged once).

Each private access is commented with why. The speed path engages only on a Lightning release in
:data:`LIGHTNING_RANGE`, the releases it was written and verified on; on any other release
:func:`lightning_release_reason` says why, and every fit takes Lightning's own step (one info line),
so mlplab's modules work with a Lightning release newer than the speed path knows.
"""

from __future__ import annotations

import lightning
from packaging.version import Version

# the Lightning releases whose private loop API the speed path was written and verified on (tests/test_lightning_matrix.py)
LIGHTNING_RANGE = (Version("2.6"), Version("2.7"))


def lightning_release_reason(version: str | None = None) -> str | None:
    """Why the installed (or the given) Lightning release cannot take the speed path, or None inside :data:`LIGHTNING_RANGE`."""
    version = lightning.__version__ if version is None else version
    low, high = LIGHTNING_RANGE
    if low <= Version(version) < high:
        return None
    return (
        f"lightning {version} is outside the releases the speed path was verified on (>= {low}, < {high}; it uses Lightning "
        "internals that may differ in other releases)"
    )


from mlplab.grouped.counters import keep_logged_hyperparameters, set_logger_step  # noqa: E402
from mlplab.grouped.steps import GroupedSteps  # noqa: E402

__all__ = ["LIGHTNING_RANGE", "GroupedSteps", "keep_logged_hyperparameters", "lightning_release_reason", "set_logger_step"]
