"""Lightning's smoke test, `--trainer.fast_dev_run=true`, runs every shipped config and fragment through the real CLI."""

import pytest
import yaml

from mlplab.cli import main
from tests.conftest import ROOT
from tests.test_cli import CONFIGS


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS)
def test_fast_dev_run_works_with_every_config(config, real_mnist, scratch_checkout, capsys):
    """Full configs run alone; fragments (no `data:`) run on top of configs/mnist.yaml, as the README composes them."""
    fragment = yaml.safe_load((ROOT / config).read_text())
    base = [] if "class_path" in fragment.get("data", {}) else ["--config", "configs/mnist.yaml"]
    main(
        [
            "fit",
            *base,
            "--config",
            config,
            "--trainer.fast_dev_run=true",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={scratch_checkout}",
        ]
    )
    # one training batch, one validation batch, then the test after fit printed its line
    assert any(line.startswith("mlplab: test/") for line in capsys.readouterr().out.splitlines())
