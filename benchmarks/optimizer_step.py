"""Milliseconds per optimizer step spent outside forward/backward, for the 784-1200-1200-10 net of configs/best/fashion_mnist.yaml.

Two per-step updates whose cost depends on the kernel, not the formula:

- ``torch.optim.Adam``: on CPU it defaults to its per-tensor loop; ``foreach=True`` batches the
  element-wise ops over tensors and ``fused=True`` does the whole update in one kernel;
- the EMA of the weights: Lightning's ``EMAWeightAveraging`` computes ``decay * ema + (1 - decay)
  * w`` tensor by tensor, ``mlplab.FusedEMAWeightAveraging`` the same average with one fused
  in-place ``torch._foreach_lerp_`` (each callback's own ``AveragedModel``, built by its ``setup``).

Same update, different cost: this prints the median of ``--repeats`` alternating timings of
``--steps`` steps for each, and each one's speed-up over the first of its kind. Usage::

    python benchmarks/optimizer_step.py --repeats 5 --steps 50
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from lightning.pytorch.callbacks import EMAWeightAveraging, WeightAveraging
from torch import nn

from mlplab import FusedEMAWeightAveraging, LitMLP


def best_config_net() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 1200), nn.BatchNorm1d(1200), nn.Linear(1200, 1200), nn.BatchNorm1d(1200), nn.Linear(1200, 10))


def adam_step(**kernel: bool) -> Callable[[], None]:
    net = best_config_net()
    for parameter in net.parameters():
        parameter.grad = torch.randn_like(parameter)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, **kernel)
    return optimizer.step


def ema_update(callback_class: type[WeightAveraging]) -> Callable[[], None]:
    model = LitMLP(hidden_dims=[1200, 1200], batch_norm=True)
    callback = callback_class(decay=0.999)
    callback.setup(None, model, "fit")  # builds the AveragedModel; the trainer is not used there
    return lambda: callback._average_model.update_parameters(model)


UPDATES: dict[str, Callable[[], Callable[[], None]]] = {
    "Adam default": adam_step,
    "Adam foreach": lambda: adam_step(foreach=True),
    "Adam fused": lambda: adam_step(fused=True),
    "EMA Lightning's EMAWeightAveraging": lambda: ema_update(EMAWeightAveraging),
    "EMA mlplab's FusedEMAWeightAveraging": lambda: ema_update(FusedEMAWeightAveraging),
}


def ms_per_step(build: Callable[[], Callable[[], None]], steps: int) -> float:
    step = build()
    for _ in range(5):  # warm-up: Adam creates its state, the EMA copies the weights, on the first step
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in UPDATES}
    for _ in range(args.repeats):  # alternating, so a noisy neighbour hits all alike
        for name, build in UPDATES.items():
            times[name].append(ms_per_step(build, args.steps))
    first_of_kind: dict[str, float] = {}
    for name, values in times.items():
        median = statistics.median(values)
        baseline = first_of_kind.setdefault(name.split()[0], median)
        print(f"{name:38s} {median:6.2f} ms per step  (speed-up over the first {name.split()[0]}: {baseline / median:.2f}x)")


if __name__ == "__main__":
    main()
