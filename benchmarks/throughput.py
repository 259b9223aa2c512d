"""Seconds per epoch: the seeds' DataLoader pipeline vs a hand-written loop vs `mlplab fit`.

One epoch = one pass over the 55k training split (batch 256 for seed 000's model) plus one
accuracy pass over the 5k validation split, for all three:

(a) seed pipeline: torchvision ``FashionMNIST``/``MNIST`` + ``ToTensor`` + ``DataLoader`` + plain loop;
(b) the floor: a hand-written eager loop over in-memory tensors (randperm + slicing);
(c) mlplab: ``LitMLP`` + the DataModule under a Trainer built by the ``mlplab`` CLI, with its
    default callbacks (checkpointing, early stopping, LR monitor, image grid), TensorBoard
    logging, torchmetrics metrics and the progress bar.

The three run alternately, ``--repeats`` times, in this one process; the median seconds per
epoch (the first epoch of each run is a warm-up and not counted) and peak RSS are printed, with
the ratios c/b and a/c, and the same ratios paired within each repetition (robust to a machine
whose speed drifts over minutes; see ``paired_ratios``). ``--breakdown`` then runs (c) once more
with timers around its phases (training steps, batch gathering, metric updates, validation loop,
checkpoint writes) and prints milliseconds per epoch for each, the rest being Lightning's loop,
callbacks and logging. Usage::

    python benchmarks/throughput.py --repeats 3 --epochs 3 [--breakdown]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import resource
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator

import torch
import torchvision
from lightning.pytorch import Trainer
from lightning.pytorch.loops.evaluation_loop import _EvaluationLoop
from torch import nn
from torch.utils.data import DataLoader, Subset

from mlplab import LitMLP
from mlplab.cli import MLPLabCLI
from mlplab.data import DATAMODULES, TensorBatchLoader

MODELS = {
    # name: (config, data set, batch size, hidden dims, dropout, optimizer, lr)
    "seed000 784-256-10 SGD": ("configs/seeds/d2l_fashion_mlp.yaml", "fashion_mnist", 256, [256], 0.0, torch.optim.SGD, 0.1),
    "default MNIST 784-512-256-10 Adam": ("configs/mnist.yaml", "mnist", 128, [512, 256], 0.2, torch.optim.Adam, 1e-3),
}


def plain_model(hidden: list[int], dropout: float) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = 784
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
        width = h
    return nn.Sequential(*layers, nn.Linear(width, 10))


def time_epochs(module) -> list[float]:
    """Record when each train epoch starts (and fit ends) by wrapping the module's own hooks.

    A timing Callback would itself add to the per-step hook dispatch being measured; the
    module's hooks are dispatched anyway.
    """
    starts: list[float] = []
    for hook in ("on_train_epoch_start", "on_fit_end"):
        original = getattr(module, hook)

        def timed(*args, _original=original, **kwargs):
            starts.append(time.perf_counter())
            return _original(*args, **kwargs)

        setattr(module, hook, timed)
    return starts


def train_epochs(model: nn.Module, opt: type, lr: float, epochs: int, train_batches: Callable, val_batches: Callable) -> list[float]:
    """The plain loop of (a) and (b): they differ only in where batches come from."""
    loss_fn, optimizer = nn.CrossEntropyLoss(), opt(model.parameters(), lr=lr)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        for x, y in train_batches():
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            correct = sum((model(x).argmax(1) == y).sum().item() for x, y in val_batches())
        times.append(time.perf_counter() - start)
        assert 0 <= correct <= 5000
    return times


def run_seed_pipeline(dataset: str, batch: int, model: nn.Module, opt: type, lr: float, epochs: int, dm) -> list[float]:
    """(a) torchvision dataset + ToTensor + DataLoader, as the seeds do (same train/val split as mlplab)."""
    cls = torchvision.datasets.FashionMNIST if dataset == "fashion_mnist" else torchvision.datasets.MNIST
    full = cls(root="data", train=True, transform=torchvision.transforms.ToTensor(), download=False)
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(dm.hparams.seed))
    train, val = Subset(full, order[5000:].tolist()), Subset(full, order[:5000].tolist())
    train_loader, val_loader = DataLoader(train, batch_size=batch, shuffle=True), DataLoader(val, batch_size=batch)
    return train_epochs(model, opt, lr, epochs, lambda: train_loader, lambda: val_loader)


def run_hand_written(batch: int, model: nn.Module, opt: type, lr: float, epochs: int, dm) -> list[float]:
    """(b) the floor: slices of in-memory tensors."""
    (x_train, y_train), (x_val, y_val) = dm.splits["train"], dm.splits["val"]

    def train_batches():
        order = torch.randperm(len(x_train))
        return ((x_train[order[i : i + batch]], y_train[order[i : i + batch]]) for i in range(0, len(order), batch))

    def val_batches():
        return ((x_val[i : i + batch], y_val[i : i + batch]) for i in range(0, len(x_val), batch))

    return train_epochs(model, opt, lr, epochs, train_batches, val_batches)


def mlplab_cli(config: str, epochs: int, logs: str, *extra: str) -> MLPLabCLI:
    """(c) as the ``mlplab fit`` command builds it, logging under ``logs``, without the final test."""
    return MLPLabCLI(
        args=[
            "--config",
            config,
            f"--trainer.max_epochs={epochs}",
            f"--trainer.logger.init_args.save_dir={logs}",
            "--test_after_fit=false",
            *extra,
        ],
        run=False,
    )


def run_mlplab(config: str, epochs: int, *extra: str) -> list[float]:
    """Epoch wall times (from one train-epoch start to the next: validation and checkpointing included)."""
    with tempfile.TemporaryDirectory() as logs:
        cli = mlplab_cli(config, epochs, logs, *extra)
        starts = time_epochs(cli.model)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return [b - a for a, b in itertools.pairwise(starts)]


TRAINING_STEP = "training_step: forward, backward, optimizer step, per-step bookkeeping"
GATHER = "gathering training batches (index_select)"
PHASES = {
    TRAINING_STEP: (LitMLP, "training_step"),
    "train metric updates and finiteness check (every steps_per_call steps)": (LitMLP, "on_train_batch_end"),
    "train epoch-end metrics and logging": (LitMLP, "on_train_epoch_end"),
    "validation loop (all of it)": (_EvaluationLoop, "run"),
    "checkpoint writes": (Trainer, "save_checkpoint"),
}


@contextlib.contextmanager
def phase_timers(totals: dict[str, float]) -> Iterator[None]:
    """Add the wall time spent in each of ``PHASES`` (and in gathering training batches) to ``totals``.

    Timers wrap whole calls (one per training step, validation run or checkpoint): about 1 µs each.
    """
    originals = {name: getattr(owner, attr) for name, (owner, attr) in PHASES.items()}
    original_start_epoch = TensorBatchLoader._start_epoch

    def timed(name: str, function: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                totals[name] += time.perf_counter() - start

        return wrapper

    def start_epoch_with_timed_gather(self):
        first, gather = original_start_epoch(self)
        if not self.sampler.shuffle:  # evaluation slices views; counted in the validation loop
            return first, gather
        return first, timed(GATHER, gather)

    for name, (owner, attr) in PHASES.items():
        setattr(owner, attr, timed(name, originals[name]))
    TensorBatchLoader._start_epoch = start_epoch_with_timed_gather
    try:
        yield
    finally:
        for name, (owner, attr) in PHASES.items():
            setattr(owner, attr, originals[name])
        TensorBatchLoader._start_epoch = original_start_epoch


def print_breakdown(config: str, epochs: int) -> None:
    """Milliseconds per epoch in each phase of (c), from one extra run (its first epoch not counted)."""
    totals: dict[str, float] = defaultdict(float)
    warm_up: dict[str, float] = {}
    with phase_timers(totals), tempfile.TemporaryDirectory() as logs:
        cli = mlplab_cli(config, epochs, logs)
        starts = time_epochs(cli.model)
        original_start = cli.model.on_train_epoch_start

        def snapshot_after_warm_up() -> None:
            original_start()
            if len(starts) == 2:  # the second epoch begins: what was spent so far is warm-up
                warm_up.update(totals)

        cli.model.on_train_epoch_start = snapshot_after_warm_up
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    counted = len(starts) - 2
    epoch_ms = (starts[-1] - starts[1]) / counted * 1e3
    print(f"  breakdown of (c), ms per epoch over {counted} epochs ({epoch_ms:.1f} ms in all):")
    phases = {name: (totals[name] - warm_up.get(name, 0.0)) / counted * 1e3 for name in totals}
    for name, value in sorted(phases.items(), key=lambda item: -item[1]):
        print(f"    {value:7.1f}  {name}")
    print(f"    {epoch_ms - sum(phases.values()):7.1f}  the rest: Lightning's loop, callbacks, progress bar, TensorBoard")


def paired_ratios(numerator_runs: list[list[float]], denominator_runs: list[list[float]], label: str) -> str:
    """Median (and range) over repetitions of the ratio of two runs' median epochs in the same repetition.

    On a shared machine whose speed drifts over minutes (seen: mlplab's epochs from 0.43 to
    0.95 s in one benchmark run), the pooled medians above mix fast and slow spells; two runs of
    the same repetition, made seconds apart ((b) right before (c); (a) before both), mostly share
    their spell, so their ratio cancels much of it (not all: one benchmark run's paired c/b still
    ranged from 0.93 to 1.49 over its repetitions).
    """
    ratios = [statistics.median(a) / statistics.median(b) for a, b in zip(numerator_runs, denominator_runs, strict=True)]
    return f"{label} = {statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f})"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is a warm-up")
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--compile", action="store_true", help="also time (d) mlplab fit --model.compile=true")
    parser.add_argument("--breakdown", action="store_true", help="then time the phases of one more (c) run")
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # the in-process mlplab CLI gets its own arguments, not the benchmark's
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, repeats={args.repeats}, epochs/run={args.epochs} (first not counted)"
    )
    for name in args.models:
        config, dataset, batch, hidden, dropout, opt, lr = MODELS[name]
        dm = DATAMODULES[dataset](batch_size=batch, normalize="none")
        dm.setup()
        runners: dict[str, Callable[[], list[float]]] = {
            "a_seed_pipeline": lambda: run_seed_pipeline(dataset, batch, plain_model(hidden, dropout), opt, lr, args.epochs, dm),
            "b_hand_written": lambda: run_hand_written(batch, plain_model(hidden, dropout), opt, lr, args.epochs, dm),
            "c_mlplab_fit": lambda: run_mlplab(config, args.epochs),
        }
        if args.compile:
            runners["d_mlplab_compiled"] = lambda: run_mlplab(config, args.epochs, "--model.compile=true")
        runs: dict[str, list[list[float]]] = {key: [] for key in runners}
        for _ in range(args.repeats):
            for key, runner in runners.items():  # alternate, so drifts in machine load hit all three alike
                runs[key].append(runner()[1:])
        samples = {key: [epoch for run in key_runs for epoch in run] for key, key_runs in runs.items()}
        median = {key: statistics.median(values) for key, values in samples.items()}
        print(f"\n{name} (batch {batch}, {len(dm.splits['train'][0])} train + {len(dm.splits['val'][0])} val samples/epoch)")
        for key, value in median.items():
            spread = f"min {min(samples[key]):.3f} max {max(samples[key]):.3f}"
            print(f"  {key:16s} {value:7.3f} s/epoch  ({len(samples[key])} epochs, {spread})")
        print(
            f"  ratio c/b = {median['c_mlplab_fit'] / median['b_hand_written']:.3f}   ratio a/c = {median['a_seed_pipeline'] / median['c_mlplab_fit']:.2f}"
        )
        print(
            f"  paired, per repetition: {paired_ratios(runs['c_mlplab_fit'], runs['b_hand_written'], 'c/b')}"
            f"   {paired_ratios(runs['a_seed_pipeline'], runs['c_mlplab_fit'], 'a/c')}"
        )
        if args.compile:
            print(f"  ratio d/c = {median['d_mlplab_compiled'] / median['c_mlplab_fit']:.3f} (compiled vs eager mlplab)")
        if args.breakdown:
            print_breakdown(config, args.epochs)
    print(f"\npeak RSS of the benchmark process: {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
