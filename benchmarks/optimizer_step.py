"""Milliseconds per ``torch.optim.Adam`` step for the best configs' 784-1200-1200-10 net, per kernel.

On CPU torch's Adam defaults to its per-tensor loop; ``foreach=True`` batches the element-wise
ops over tensors and ``fused=True`` does the whole update in one kernel. Same update, different
cost: this prints the median of ``--repeats`` timings of ``--steps`` steps for each. Usage::

    python benchmarks/optimizer_step.py --repeats 5 --steps 50
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

KERNELS = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def best_config_net() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 1200), nn.BatchNorm1d(1200), nn.Linear(1200, 1200), nn.BatchNorm1d(1200), nn.Linear(1200, 10))


def ms_per_step(kernel: dict[str, bool], steps: int) -> float:
    net = best_config_net()
    for parameter in net.parameters():
        parameter.grad = torch.randn_like(parameter)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, **kernel)
    for _ in range(5):  # warm-up: the optimizer state is created on the first step
        optimizer.step()
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in KERNELS}
    for _ in range(args.repeats):  # alternating, so a noisy neighbour hits all kernels alike
        for name, kernel in KERNELS.items():
            times[name].append(ms_per_step(kernel, args.steps))
    default = statistics.median(times["default"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"Adam {name:8s} {median:6.2f} ms per step  (default / this = {default / median:.2f})")


if __name__ == "__main__":
    main()
