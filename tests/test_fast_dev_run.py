"""Lightning's smoke test, `--trainer.fast_dev_run=true`, runs every shipped config and fragment through the real CLI."""

from collections import Counter

import pytest
import yaml
from lightning.pytorch import Callback

from mlplab.cli import main
from tests.conftest import ROOT
from tests.test_cli import CONFIGS


class CountBatches(Callback):
    """Counts the batches each stage ran, and notes the model and data module the config built."""

    def __init__(self) -> None:
        self.batches: Counter[str] = Counter()
        self.built: tuple[str, str] | None = None

    def setup(self, trainer, pl_module, stage):
        self.built = (type(pl_module).__name__, type(trainer.datamodule).__name__)

    def on_train_batch_end(self, *args):
        self.batches["train"] += 1

    def on_validation_batch_end(self, *args):
        self.batches["val"] += 1

    def on_test_batch_end(self, *args):
        self.batches["test"] += 1


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS)
def test_fast_dev_run_works_with_every_config(config, real_mnist, scratch_checkout):
    """Full configs run alone; fragments (no `data:`) run on top of configs/mnist.yaml, as the README composes them."""
    fragment = yaml.safe_load((ROOT / config).read_text())
    full = "class_path" in fragment.get("data", {})
    counter = CountBatches()
    main(
        [
            "fit",
            *([] if full else ["--config", "configs/mnist.yaml"]),
            "--config",
            config,
            "--trainer.fast_dev_run=true",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={scratch_checkout}",
        ],
        extra_callbacks=[counter],
    )
    data_class = fragment["data"]["class_path"].rpartition(".")[2] if full else "MNISTDataModule"
    assert counter.built == ("LitMLP", data_class)
    # one training batch, one validation batch, then the test after fit (fast_dev_run: one batch each)
    assert counter.batches == {"train": 1, "val": 1, "test": 1}
