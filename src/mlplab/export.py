"""Export a trained checkpoint for use without mlplab's training code.

Every format takes the raw inputs the DataModules serve (float pixels in [0, 1], any shape that
flattens to the input size, e.g. ``(N, 1, 28, 28)`` or ``(N, 784)``) and returns the model's
outputs (logits for classification): the pre-processing fitted at training time is part of the
exported model.

- ``state_dict``: ``torch.save({"state_dict", "hyper_parameters"})`` — tensors and plain data,
  loadable with ``torch.load(weights_only=True)``; :func:`load_exported` rebuilds the LitMLP.
- ``safetensors``: the same tensors in the safetensors format, hyper-parameters as JSON metadata.
- ``torchscript``: a traced ``torch.jit`` module (``torch.jit.load``), no Python class needed.
- ``onnx``: an ONNX graph with a dynamic batch dimension (input ``input``, output ``output``).

Files are written to a temporary name and renamed: a failed export leaves no partial file.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mlplab.checkpointing import check_checkpoint_file
from mlplab.data.idx import atomic_write, atomic_write_bytes
from mlplab.errors import ConfigError
from mlplab.extras import require_extra
from mlplab.lit_mlp import LitMLP

# the formats that need the `export` extra, and what each imports
EXTRA_MODULES: dict[str, tuple[str, ...]] = {"safetensors": ("safetensors",), "onnx": ("onnx", "onnxscript")}
FORMATS: dict[str, str] = {"state_dict": ".pt", "safetensors": ".safetensors", "torchscript": ".torchscript.pt", "onnx": ".onnx"}
# the LitMLP arguments that define the network (the rest only matter for training)
ARCHITECTURE_KEYS = (
    "input_dim",
    "num_classes",
    "hidden_dims",
    "activation",
    "dropout",
    "batch_norm",
    "residual",
    "maxout_pieces",
    "init",
    "init_std",
    "bias_init",
    "task",
)


class InferenceModel(nn.Module):
    """Pre-processing + network of a LitMLP, in eval mode: what the traced and ONNX exports contain."""

    def __init__(self, model: LitMLP) -> None:
        super().__init__()
        self.preprocessor, self.net = model.preprocessor, model.net
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.preprocessor(x))


def raw_input_size(model: LitMLP) -> int:
    """Values per raw sample (before PCA and the like)."""
    projection = model.preprocessor.projection
    return projection.shape[0] if projection.numel() else model.hparams.input_dim


def architecture(hparams: dict[str, Any]) -> dict[str, Any]:
    return {key: hparams[key] for key in ARCHITECTURE_KEYS if key in hparams}


def export_checkpoint(ckpt_path: str | Path, fmt: str, output: str | Path | None = None) -> Path:
    """Write the checkpoint's model in format ``fmt`` to ``output`` (default: the checkpoint's path with the format's suffix)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format={fmt!r} is not a known export format; allowed: {', '.join(FORMATS)}.")
    if fmt in EXTRA_MODULES:
        require_extra("export", f"mlplab export --format {fmt}", EXTRA_MODULES[fmt])
    check_checkpoint_file(ckpt_path)
    model = LitMLP.load_from_checkpoint(ckpt_path, map_location="cpu").eval()
    output = Path(output) if output else Path(ckpt_path).with_suffix(FORMATS[fmt])
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    hparams = architecture(dict(model.hparams))
    example = torch.rand(2, raw_input_size(model))
    if fmt == "state_dict":
        buffer = io.BytesIO()  # written by Python: a failed write names the OS's reason (see AtomicCheckpointIO)
        torch.save({"state_dict": state, "hyper_parameters": hparams}, buffer)
        atomic_write_bytes(output, buffer.getbuffer())
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        atomic_write(output, lambda path: save_file(state, str(path), metadata={"mlplab_hyper_parameters": json.dumps(hparams)}))
    elif fmt == "torchscript":
        with torch.no_grad():
            traced = torch.jit.trace(InferenceModel(model), example)
        atomic_write(output, lambda path: torch.jit.save(traced, str(path)))
    else:
        batch = torch.export.Dim("batch", min=1)
        atomic_write(
            output,
            lambda path: torch.onnx.export(
                InferenceModel(model),
                (example,),
                str(path),
                input_names=["input"],
                output_names=["output"],
                dynamic_shapes=({0: batch},),
                dynamo=True,
                external_data=False,
                verbose=False,
            ),
        )
    return output


def load_exported(path: str | Path) -> LitMLP:
    """A LitMLP (eval mode) rebuilt from a ``state_dict`` or ``safetensors`` export."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as handle:
            hparams = json.loads(handle.metadata()["mlplab_hyper_parameters"])
        state = load_file(str(path))
    else:
        content = torch.load(path, map_location="cpu", weights_only=True)
        state, hparams = content["state_dict"], content["hyper_parameters"]
    model = LitMLP(**architecture(hparams))
    model.load_state_dict(state)
    return model.eval()
