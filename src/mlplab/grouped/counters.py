"""The two private Lightning flags the ``mlplab`` command sets on a Trainer and its modules (Lightning has no public setter for either).

They are attribute writes without any private import, so importing mlplab does not depend on them;
both are Lightning 2.6's names (:data:`mlplab.grouped.LIGHTNING_RANGE`).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Trainer


def set_logger_step(trainer: Trainer, step: int) -> None:
    """Make ``trainer``'s loggers write at ``step`` (Lightning offers no public setter; validate/test log at this counter)."""
    trainer.fit_loop.epoch_loop._batches_that_stepped = step


def keep_logged_hyperparameters(*components: Any) -> None:
    """Stop the Trainer logging the hparams of these modules/DataModules again (its TensorBoard entry keeps the fit's hp_metric).

    Lightning logs them (with a placeholder ``hp_metric=-1``) at the start of every stage; a test or validate
    logged into the fit's own run would overwrite the fit's entry.
    """
    for component in components:
        if component is not None:
            # private LightningModule/DataModule flag: Lightning has no public switch once they are built
            component._log_hyperparams = False
