"""End to end on the real MNIST files: the real `mlplab` command, a few batches, then reload."""

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from tests.conftest import MLPLAB, REAL_DATA_DIR, RESULT_LINE, ROOT


def test_fit_writes_checkpoints_and_prints_the_result_line(mnist_run):
    ckpt = mnist_run["ckpt"]
    assert ckpt.is_file() and ckpt.parent == mnist_run["logs"] / "mnist" / "version_0" / "checkpoints"
    assert (ckpt.parent / "last.ckpt").is_file()
    assert 0.93 < mnist_run["acc"] <= 1.0  # 200 steps of Adam on MNIST (0.9445 on the machines of docs/tests.md)


def test_tensorboard_has_scalars_images_histograms_and_hparams(mnist_run):
    events = EventAccumulator(str(mnist_run["logs"] / "mnist" / "version_0"), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    expected = {"train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "test/acc", "test/loss", "lr-Adam", "hp_metric"}
    assert expected <= scalars, expected - scalars
    assert {"train/batch", "test/confusion_matrix", "test/misclassified"} <= set(events.Tags()["images"])
    assert {"grad_norm/net.hidden.0.branch.0.weight", "grad_norm/net.output.weight"} <= scalars
    histograms = set(events.Tags()["histograms"])
    expected_histograms = {
        "weights/net.hidden.0.branch.0.weight",
        "gradients/net.output.weight",
        "activations/hidden.0",
        "activations/hidden.1",
    }
    assert expected_histograms <= histograms, histograms
    steps = events.Scalars("train/optimizer_steps")[-1].value
    assert [e.step for e in events.Histograms("weights/net.output.weight")] == list(range(0, int(steps), 30))  # every 30th step
    confusion = events.Images("test/confusion_matrix")[-1]
    assert confusion.width > 300 and confusion.height > 300
    hparams = {tag: HParamsPluginData.FromString(content) for tag, content in events.PluginTagToContent("hparams").items()}
    assert [info.name.tag for info in hparams["_hparams_/experiment"].experiment.metric_infos] == ["hp_metric"]
    logged = hparams["_hparams_/session_start_info"].session_start_info.hparams
    assert logged["hidden_dims"].string_value == "[512, 256]" and logged["batch_size"].number_value == 128
    assert events.Scalars("test/acc")[-1].value == pytest.approx(mnist_run["acc"], abs=1e-4)
    assert events.Scalars("hp_metric")[-1].value == pytest.approx(events.Scalars("val/acc_best")[-1].value)


def test_reloaded_checkpoint_gives_the_same_test_accuracy_in_a_new_process(mnist_run):
    script = textwrap.dedent(f"""
        from lightning.pytorch import Trainer
        from mlplab import LitMLP
        from mlplab.data import MNISTDataModule
        model = LitMLP.load_from_checkpoint({str(mnist_run["ckpt"])!r}, weights_only=True)
        trainer = Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
        (result,) = trainer.test(model, datamodule=MNISTDataModule(data_dir={str(REAL_DATA_DIR)!r}), verbose=False)
        print(f"acc={{result['test/acc']:.4f}}")
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == f"acc={mnist_run['acc']:.4f}"


def test_diverging_run_stops_with_one_paragraph_and_no_checkpoint(real_mnist, tmp_path):
    command = [
        MLPLAB,
        "fit",
        "--config",
        "configs/fast/mnist_98.yaml",
        "--model.optimizer=SGD",
        "--model.optimizer.lr=1e6",
        "--model.lr_scheduler=null",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=128",
        "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        f"--data.data_dir={REAL_DATA_DIR}",
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r"mlplab: error: training diverged: the loss became (nan|inf) at optimizer step \d+ \(epoch 0\), with learning rate 1e\+06\. .*",
        last,
    )
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize(
    ("config", "limit", "steps"),
    [("configs/mnist.yaml", "--trainer.max_steps=10", 10), ("configs/fast/mnist_98.yaml", "--trainer.fast_dev_run=1", 1)],
)
def test_a_fit_cut_short_by_max_steps_ends_normally(real_mnist, tmp_path, config, limit, steps):
    # max_steps inside the first group of 64 steps, before any validation: early stopping has no val/loss
    # yet and OneCycleLR was built for exactly `steps` steps
    command = [
        MLPLAB,
        "fit",
        "--config",
        config,
        limit,
        "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        f"--data.data_dir={REAL_DATA_DIR}",
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"(1 epochs, {steps} optimizer steps)" in result.stderr
    assert "mlplab: test/acc=" in result.stdout and "ckpt=none (current weights)" in result.stdout  # no validation: no best checkpoint


def test_evaluating_without_a_checkpoint_says_the_weights_are_untrained(real_mnist, tmp_path):
    command = [
        MLPLAB,
        "validate",
        "--config",
        "configs/mnist.yaml",
        "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        f"--data.data_dir={REAL_DATA_DIR}",
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mlplab: no --ckpt_path: validate runs on a new model's untrained weights." in result.stdout + result.stderr


def predict_csv(tmp_path: Path, ckpt: Path, *args: str) -> list[list[str]]:
    output = tmp_path / "predictions.csv"
    command = [
        MLPLAB,
        "predict",
        "--config",
        "configs/mnist.yaml",
        f"--ckpt_path={ckpt}",
        f"--data.data_dir={REAL_DATA_DIR}",
        f"--prediction_writer.output={output}",
        "--trainer.enable_progress_bar=false",
        *args,
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return [line.split(",") for line in output.read_text().splitlines()]


def test_predict_writes_a_csv_for_the_test_split_and_for_a_png_folder(mnist_run, real_mnist, tmp_path):
    import torch
    import torchvision

    from mlplab.data import read_idx

    rows = predict_csv(tmp_path, mnist_run["ckpt"])
    assert rows[0] == ["index", "predicted"] + [f"p_{c}" for c in range(10)] and len(rows) == 10_001
    probabilities = torch.tensor([[float(v) for v in row[2:]] for row in rows[1:]])
    torch.testing.assert_close(probabilities.sum(1), torch.ones(10_000), atol=1e-4, rtol=0)
    labels = read_idx(real_mnist / "t10k-labels-idx1-ubyte").long()
    predicted = torch.tensor([int(row[1]) for row in rows[1:]])
    assert (predicted == labels).float().mean() == pytest.approx(mnist_run["acc"], abs=1e-4)  # the same accuracy `fit` printed

    pngs = tmp_path / "pngs"
    pngs.mkdir()
    images = read_idx(real_mnist / "t10k-images-idx3-ubyte")[:3]
    for name, image in zip(("c.png", "a.png", "b.png"), images, strict=True):
        torchvision.io.write_png(image.unsqueeze(0), str(pngs / name))
    png_rows = predict_csv(tmp_path, mnist_run["ckpt"], f"--data.predict_dir={pngs}")
    assert png_rows[0][0] == "file" and [row[0] for row in png_rows[1:]] == ["a.png", "b.png", "c.png"]
    by_name = {row[0]: row[1:] for row in png_rows[1:]}
    assert [by_name[name][0] for name in ("c.png", "a.png", "b.png")] == [row[1] for row in rows[1:4]]  # same pixels, same class
    # and the same probabilities, up to the last printed digit (a batch of 3 sums in another order than the test split's)
    png_probabilities = torch.tensor([[float(v) for v in by_name[name][1:]] for name in ("c.png", "a.png", "b.png")])
    torch.testing.assert_close(png_probabilities, probabilities[:3], atol=2e-6, rtol=0)


def test_predict_writes_no_tensorboard_run(mnist_run, real_mnist, tmp_path):
    logs = tmp_path / "logs"
    predict_csv(tmp_path, mnist_run["ckpt"], f"--trainer.logger.init_args.save_dir={logs}")
    assert not logs.exists()


def test_testing_a_checkpoint_logs_into_the_run_that_trained_it_at_its_last_step(mnist_run, real_mnist, tmp_path):
    logs = shutil.copytree(mnist_run["logs"], tmp_path / "logs")  # (a copy: the shared run stays as it was trained)
    run = logs / "mnist" / "version_0"
    ckpt = run / "checkpoints" / mnist_run["ckpt"].name
    config_before = (run / "config.yaml").read_text()
    command = [
        MLPLAB,
        "test",
        "--config",
        "configs/mnist.yaml",
        f"--ckpt_path={ckpt}",
        f"--data.data_dir={REAL_DATA_DIR}",
        "--trainer.limit_test_batches=3",
        "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={logs}",
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]  # no new run
    assert (run / "config.yaml").read_text() == config_before  # the fit's config is kept
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    optimizer_steps = int(events.Scalars("train/optimizer_steps")[-1].value)
    test_acc = events.Scalars("test/acc")  # the fit's own test, then this one's, both after the run's last optimizer step
    assert len(test_acc) == 2 and {e.step for e in test_acc} == {optimizer_steps}
    assert events.Scalars("hp_metric")[-1].value == pytest.approx(
        events.Scalars("val/acc_best")[-1].value
    )  # no placeholder written over it


SUBCLASS = '''
from mlplab import LitMLP


class MyLitMLP(LitMLP):
    """What a Lightning user writes: training_step unpacks its batch and returns the loss."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.criterion(self(x), y)
        self.log("train/my_loss", loss)
        return loss
'''


def test_a_subclass_overriding_training_step_trains_through_the_cli(real_mnist, tmp_path):
    (tmp_path / "mypackage").mkdir()
    (tmp_path / "mypackage" / "__init__.py").write_text(SUBCLASS)
    command = [
        MLPLAB,
        "fit",
        "--config",
        "configs/mnist.yaml",
        "--model=mypackage.MyLitMLP",
        "--trainer.max_steps=70",
        "--trainer.limit_val_batches=2",
        "--trainer.enable_progress_bar=false",
        "--test_after_fit=false",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
        f"--data.data_dir={REAL_DATA_DIR}",
    ]
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "mlplab: Lightning's own step per batch (model.steps_per_call=64 not used): MyLitMLP overrides training_step" in output
    assert "(1 epochs, 70 optimizer steps)" in output
    config = (tmp_path / "logs" / "mnist" / "version_0" / "config.yaml").read_text()
    assert "class_path: mypackage.MyLitMLP" in config and "dropout: 0.2" in config  # the config's model settings carried over


def test_lr_find_config_prints_the_suggestion_saves_the_plot_and_trains_nothing(real_mnist, tmp_path):
    command = [
        MLPLAB, "fit", "--config", "configs/mnist.yaml", "--config", "configs/lr_find.yaml", "--lr_finder.init_args.num_training_steps=30",
        "--trainer.enable_progress_bar=false", f"--trainer.logger.init_args.save_dir={tmp_path}", f"--data.data_dir={REAL_DATA_DIR}",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    line = re.search(
        r"^mlplab: lr_find suggests lr=(?P<lr>\S+) \(\d+ learning rates .*plot: (?P<png>\S+)\. Train with it: (?P<option>\S+)$",
        output,
        re.M,
    )
    assert line, output[-3000:]
    assert line["option"] == f"--model.optimizer.init_args.lr={line['lr']}" and 1e-6 < float(line["lr"]) < 1.0
    run = tmp_path / "mnist" / "version_0"
    assert Path(line["png"]) == run / "lr_find.png" and Path(line["png"]).read_bytes()[:4] == b"\x89PNG"
    events = EventAccumulator(str(run))
    events.Reload()
    assert "lr_find" in events.Tags()["images"]
    assert "optimizer steps" in output and "(0 epochs, 0 optimizer steps)" in output  # the search only: nothing trained
    assert not RESULT_LINE.search(result.stdout) and not (run / "checkpoints").exists()
    assert not list(ROOT.glob(".lr_find_*.ckpt"))  # Lightning's copy of the starting weights is removed


def custom_scalars_layout(run: Path) -> dict[str, dict[str, list[str]]]:
    """The Custom Scalars layout a run wrote, read back from its event file: {category: {chart: [tag regexes]}}."""
    from tensorboard.plugins.custom_scalar import layout_pb2
    from tensorboard.util import tensor_util

    events = EventAccumulator(str(run), size_guidance={"tensors": 0})
    events.Reload()
    [event] = events.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(tensor_util.make_ndarray(event.tensor_proto).item())
    return {category.title: {chart.title: list(chart.multiline.tag) for chart in category.chart} for category in layout.category}


def test_tensorboard_custom_scalars_put_train_and_validation_on_one_chart(mnist_run):
    layout = custom_scalars_layout(mnist_run["logs"] / "mnist" / "version_0")
    assert layout == {
        "mlplab: train against validation": {
            "loss": ["^(train|val|test)/loss$"],
            "acc": ["^(train|val|test)/acc$"],
            "learning rate": ["^lr-"],
        }
    }
