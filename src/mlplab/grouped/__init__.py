"""The speed path (several batches per fetch, one optimizer step each) and every private Lightning API mlplab uses.

- :mod:`mlplab.grouped.loop`: :class:`GroupedTrainingEpochLoop`, Lightning's epoch loop taking
  its batches from groups, and the other uses of Lightning's loop internals;
- :mod:`mlplab.grouped.steps`: :class:`GroupedSteps`, the LightningModule mixin that decides
  whether a fit groups and takes the optimizer step itself (manual optimization).

Each private access is commented with why; :func:`check_lightning_version` refuses a Lightning
release outside the range this was written and tested for (``pyproject.toml`` pins the same).
"""

from __future__ import annotations

import lightning
from packaging.version import Version

from mlplab.errors import ConfigError

# the Lightning releases this package was written and tested against
LIGHTNING_RANGE = (Version("2.6"), Version("2.7"))


def check_lightning_version(version: str = lightning.__version__) -> None:
    """ConfigError unless ``version`` is in :data:`LIGHTNING_RANGE` (the private APIs used here may move in other releases)."""
    low, high = LIGHTNING_RANGE
    if not low <= Version(version) < high:
        raise ConfigError(
            f"lightning {version} is installed, but mlplab's training loop was written and tested for lightning >= {low}, < {high} "
            f"(it uses Lightning internals that may differ elsewhere); install a release in that range: pip install 'lightning>={low},<{high}'."
        )


from mlplab.grouped.loop import (  # noqa: E402
    GroupedTrainingEpochLoop,
    epoch_ran_to_its_end,
    install_grouped_loop,
    keep_logged_hyperparameters,
    set_logger_step,
)
from mlplab.grouped.steps import GroupedSteps  # noqa: E402

__all__ = [
    "LIGHTNING_RANGE",
    "GroupedSteps",
    "GroupedTrainingEpochLoop",
    "check_lightning_version",
    "epoch_ran_to_its_end",
    "install_grouped_loop",
    "keep_logged_hyperparameters",
    "set_logger_step",
]
