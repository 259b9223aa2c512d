"""`mlplab export`: every format reloads and reproduces the checkpoint's outputs, pre-processing included."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from mlplab import LitMLP
from mlplab.cli import main
from mlplab.export import FORMATS, load_exported

from .conftest import quiet_trainer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A trained tiny model with deskewing and a fitted PCA pre-processing (so the export must carry both)."""
    from .conftest import make_tiny_idx, tiny_datamodule_class

    folder = tmp_path_factory.mktemp("export")
    dm = tiny_datamodule_class(make_tiny_idx(folder / "Tiny" / "raw"))(
        data_dir=str(folder), val_size=40, batch_size=32, normalize="pca", pca_components=20, deskew=True
    )
    model = LitMLP(input_dim=20, hidden_dims=[16], batch_norm=True, dropout=0.2)
    callback = ModelCheckpoint(dirpath=folder / "ckpt", save_last=True)
    quiet_trainer(folder, max_epochs=2, callbacks=[callback]).fit(model, datamodule=dm)
    return folder / "ckpt" / "last.ckpt"


def reference_outputs(checkpoint, x):
    model = LitMLP.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    with torch.no_grad():
        return model(x)


def reload(path, fmt):
    if fmt in ("state_dict", "safetensors"):
        return load_exported(path)
    if fmt == "torchscript":
        return torch.jit.load(path)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path))
    return lambda x: torch.from_numpy(session.run(None, {"input": x.flatten(1).numpy()})[0])


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_export_reloads_and_reproduces_the_checkpoint(checkpoint, tmp_path, capsys, fmt):
    output = tmp_path / f"model{FORMATS[fmt]}"
    main(["export", f"--ckpt_path={checkpoint}", f"--format={fmt}", f"--output={output}"])
    assert f"mlplab: exported {checkpoint} as {fmt} to {output}" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == [output.name]  # no temporary files left
    x = torch.rand(7, 1, 28, 28)
    with torch.no_grad():
        exported = reload(output, fmt)(x)
    torch.testing.assert_close(exported, reference_outputs(checkpoint, x), rtol=1e-4, atol=1e-4)
    if fmt == "state_dict":
        torch.load(output, weights_only=True)  # plain tensors and data


def test_unknown_format_and_missing_checkpoint_are_clear_errors(checkpoint, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", f"--ckpt_path={checkpoint}", "--format=pickle"])
    assert exit_info.value.code == 2 and "invalid choice: 'pickle'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--ckpt_path=nope.ckpt", "--format=onnx"])
    assert exit_info.value.code == 2 and "ckpt_path='nope.ckpt' does not exist" in capsys.readouterr().err
