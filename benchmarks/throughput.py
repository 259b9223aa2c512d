"""Seconds per epoch: the seeds' DataLoader pipeline vs a hand-written loop vs `mlplab fit`.

One epoch = one pass over the 55k training split (batch 256 for seed 000's model) plus one
accuracy pass over the 5k validation split, for all three:

(a) seed pipeline: torchvision ``FashionMNIST``/``MNIST`` + ``ToTensor`` + ``DataLoader`` + plain loop;
(b) the floor: a hand-written eager loop over in-memory tensors (randperm + slicing), training
    the same network from the same initialisation scheme as (c);
(c) mlplab: ``LitMLP`` + the DataModule under a Trainer built by the ``mlplab`` CLI, with its
    default callbacks (checkpointing, early stopping, LR monitor, image grid), TensorBoard
    logging, torchmetrics metrics and the progress bar;
(d) the same ``mlplab fit`` with ``--model.steps_per_call=1``: Lightning's own step per batch, so
    d/c is what the grouped speed path buys.

Each repetition runs (a), then one fit of (c) during which (b) trains one epoch right before each
of (c)'s epochs (from a hook at (c)'s epoch start, outside (c)'s clock): the two alternate epoch
by epoch, so they share the machine's speed of that moment (these machines are shared and their
speed drifts over minutes). The median seconds per epoch (the first epoch of each run is a
warm-up and not counted) and peak RSS are printed, with the ratios c/b, a/c and a/b (the ceiling
of a/c for an mlplab no faster than the hand-written loop), then c/b paired epoch by epoch and a/c
and a/b paired per repetition (see ``paired_ratios``). ``--breakdown`` then runs
(c) once more with timers around its phases (training steps, batch gathering, per-batch hooks,
validation loop, checkpoint writes) and prints milliseconds per epoch for each, the rest being
Lightning's loop, callbacks and logging. ``--accelerator gpu`` runs all of it on the first CUDA
device: (b) keeps the splits there as (c) does (``--trainer.accelerator=gpu``), (a) copies each
batch there, and every epoch ends with a CUDA synchronisation so that its time is the GPU's. Usage::

    python benchmarks/throughput.py --repeats 3 --epochs 5 [--breakdown] [--accelerator gpu]
"""

from __future__ import annotations

import argparse
import contextlib
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
from mlplab.grouped.loop import GroupedTrainingEpochLoop

MODELS = {
    # name: (config, data set, batch size, hidden dims, dropout, weight init std (None: PyTorch's default), optimizer, lr)
    "seed000 784-256-10 SGD": ("configs/seeds/d2l_fashion_mlp.yaml", "fashion_mnist", 256, [256], 0.0, 0.01, torch.optim.SGD, 0.1),
    "default MNIST 784-512-256-10 Adam": ("configs/mnist.yaml", "mnist", 128, [512, 256], 0.2, None, torch.optim.Adam, 1e-3),
}


def plain_model(hidden: list[int], dropout: float, init_std: float | None) -> nn.Module:
    """The network of the config, initialised as the config says (``init: normal``: weights from N(0, init_std²)).

    The same arithmetic runs at a speed that depends on the values (on this CPU seed 000's N(0, 0.01²)
    weights train about 3 % slower than PyTorch's default initialisation), so (b) starts where (c) starts.
    """
    layers: list[nn.Module] = [nn.Flatten()]
    width = 784
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
        width = h
    model = nn.Sequential(*layers, nn.Linear(width, 10))
    if init_std is not None:
        for layer in model:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, 0.0, init_std)
    return model


DEVICE = torch.device("cpu")  # where (a), (b) and (c) run: --accelerator


def synchronize() -> None:
    """Wait for the device's queued work (a CUDA epoch's time is the GPU's, not the time it took to queue it)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


class PlainLoop:
    """The plain loop of (a) and (b), one epoch per call: they differ only in where batches come from."""

    def __init__(self, model: nn.Module, opt: type, lr: float, train_batches: Callable, val_batches: Callable) -> None:
        model = model.to(DEVICE)
        self.model, self.train_batches, self.val_batches = model, train_batches, val_batches
        self.loss_fn, self.optimizer = nn.CrossEntropyLoss(), opt(model.parameters(), lr=lr)

    def epoch(self) -> float:
        """Train one epoch and count the validation split's correct predictions; returns the seconds it took."""
        model, optimizer = self.model, self.optimizer
        start = time.perf_counter()
        model.train()
        for x, y in self.train_batches():
            x, y = x.to(DEVICE, non_blocking=True), y.to(DEVICE, non_blocking=True)  # ((b): already there)
            optimizer.zero_grad()
            self.loss_fn(model(x), y).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            correct = sum((model(x.to(DEVICE)).argmax(1) == y.to(DEVICE)).sum().item() for x, y in self.val_batches())
        synchronize()
        seconds = time.perf_counter() - start
        assert 0 <= correct <= 5000
        return seconds


def seed_pipeline(dataset: str, batch: int, model: nn.Module, opt: type, lr: float, dm) -> PlainLoop:
    """(a) torchvision dataset + ToTensor + DataLoader, as the seeds do (same train/val split as mlplab)."""
    cls = torchvision.datasets.FashionMNIST if dataset == "fashion_mnist" else torchvision.datasets.MNIST
    full = cls(root="data", train=True, transform=torchvision.transforms.ToTensor(), download=False)
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(dm.hparams.seed))
    train, val = Subset(full, order[5000:].tolist()), Subset(full, order[:5000].tolist())
    train_loader, val_loader = DataLoader(train, batch_size=batch, shuffle=True), DataLoader(val, batch_size=batch)
    return PlainLoop(model, opt, lr, lambda: train_loader, lambda: val_loader)


def hand_written(batch: int, model: nn.Module, opt: type, lr: float, dm) -> PlainLoop:
    """(b) the floor: slices of in-memory tensors."""
    (x_train, y_train), (x_val, y_val) = ((x.to(DEVICE), y.to(DEVICE)) for x, y in (dm.splits["train"], dm.splits["val"]))

    def train_batches():
        order = torch.randperm(len(x_train), device=DEVICE)
        return ((x_train[order[i : i + batch]], y_train[order[i : i + batch]]) for i in range(0, len(order), batch))

    def val_batches():
        return ((x_val[i : i + batch], y_val[i : i + batch]) for i in range(0, len(x_val), batch))

    return PlainLoop(model, opt, lr, train_batches, val_batches)


def time_epochs(module, before_epoch: Callable[[], None] | None = None) -> list[list[float]]:
    """Record each train epoch's [start, end] by wrapping the module's own hooks; ``before_epoch`` runs off the clock.

    An epoch runs from its ``on_train_epoch_start`` to the next one's (or to ``on_fit_end``), so its
    validation, checkpoints and logging count. A timing Callback would itself add to the per-step
    hook dispatch being measured; the module's hooks are dispatched anyway.
    """
    epochs: list[list[float]] = []
    original_start, original_end = module.on_train_epoch_start, module.on_fit_end

    def epoch_start() -> None:
        synchronize()
        if epochs:
            epochs[-1].append(time.perf_counter())
        if before_epoch is not None:
            before_epoch()
        epochs.append([time.perf_counter()])
        original_start()

    def fit_end() -> None:
        synchronize()
        epochs[-1].append(time.perf_counter())
        original_end()

    module.on_train_epoch_start, module.on_fit_end = epoch_start, fit_end
    return epochs


def mlplab_cli(config: str, epochs: int, logs: str, *extra: str) -> MLPLabCLI:
    """(c) as the ``mlplab fit`` command builds it, logging under ``logs``, without the final test."""
    return MLPLabCLI(
        args=[
            "--config",
            config,
            f"--trainer.max_epochs={epochs}",
            f"--trainer.logger.init_args.save_dir={logs}",
            "--test_after_fit=false",
            f"--trainer.accelerator={'gpu' if DEVICE.type == 'cuda' else 'cpu'}",
            *extra,
        ],
        run=False,
    )


def run_mlplab(config: str, epochs: int, *extra: str, before_epoch: Callable[[], None] | None = None) -> list[float]:
    """Epoch wall times (from one train-epoch start to the next: validation and checkpointing included).

    ``before_epoch`` runs at each epoch's start, off the clock (the interleaved (b) epochs).
    """
    with tempfile.TemporaryDirectory() as logs:
        cli = mlplab_cli(config, epochs, logs, *extra)
        timed = time_epochs(cli.model, before_epoch)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return [end - start for start, end in timed]


TRAINING_STEP = "training_step: forward, backward, optimizer step, per-step bookkeeping"
GATHER = "gathering training batches (index_select)"
PHASES = {
    TRAINING_STEP: (LitMLP, "training_step"),
    # (LitMLP.on_train_batch_end, the finiteness check every steps_per_call steps, runs inside it)
    "per-batch hooks: progress bar, LR monitor, checkpoint callbacks, the module's": (GroupedTrainingEpochLoop, "_call_hook"),
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
        # at the second epoch's start, what was spent so far is warm-up
        timed = time_epochs(cli.model, before_epoch=lambda: warm_up.update(totals) if len(timed) == 1 else None)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    counted = len(timed) - 1
    epoch_ms = sum(end - start for start, end in timed[1:]) / counted * 1e3
    print(f"  breakdown of (c), ms per epoch over {counted} epochs ({epoch_ms:.1f} ms in all):")
    phases = {name: (totals[name] - warm_up.get(name, 0.0)) / counted * 1e3 for name in totals}
    for name, value in sorted(phases.items(), key=lambda item: -item[1]):
        print(f"    {value:7.1f}  {name}")
    print(f"    {epoch_ms - sum(phases.values()):7.1f}  the rest: Lightning's loop, callbacks, progress bar, TensorBoard")


def paired_ratios(numerators: list[float], denominators: list[float], label: str) -> str:
    """Median (and range) of the ratios of paired timings: epochs run back to back, or runs of one repetition.

    On a shared machine whose speed drifts over minutes (seen: mlplab's epochs from 0.43 to
    0.95 s in one benchmark run), the pooled medians above mix fast and slow spells; a (c) epoch
    and the (b) epoch run just before it share their spell, so their ratio cancels most of it.
    """
    ratios = [a / b for a, b in zip(numerators, denominators, strict=True)]
    return f"{label} = {statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f})"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5, help="epochs per run; the first is a warm-up")
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--compile", action="store_true", help="also time (e) mlplab fit --model.compile=true")
    parser.add_argument("--breakdown", action="store_true", help="then time the phases of one more (c) run")
    parser.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu", help="gpu: (a), (b) and (c) on the first CUDA device")
    args = parser.parse_args()
    if args.accelerator == "gpu":
        if not torch.cuda.is_available():
            sys.exit("--accelerator gpu: torch sees no CUDA device on this machine.")
        global DEVICE
        DEVICE = torch.device("cuda", 0)
    sys.argv = sys.argv[:1]  # the in-process mlplab CLI gets its own arguments, not the benchmark's
    where = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "CPU"
    print(
        f"{where}, torch {torch.__version__}, {torch.get_num_threads()} threads, repeats={args.repeats}, epochs/run={args.epochs} (first not counted)"
    )
    for name in args.models:
        config, dataset, batch, hidden, dropout, init_std, opt, lr = MODELS[name]
        dm = DATAMODULES[dataset](batch_size=batch, normalize="none")
        dm.setup()
        keys = ("a_seed_pipeline", "b_hand_written", "c_mlplab_fit", "d_one_step_per_call")
        runs: dict[str, list[list[float]]] = {key: [] for key in keys}
        if args.compile:
            runs["e_mlplab_compiled"] = []
        for _ in range(args.repeats):
            seed_loop = seed_pipeline(dataset, batch, plain_model(hidden, dropout, init_std), opt, lr, dm)
            runs["a_seed_pipeline"].append([seed_loop.epoch() for _ in range(args.epochs)][1:])
            plain_loop, plain_epochs = hand_written(batch, plain_model(hidden, dropout, init_std), opt, lr, dm), []
            fit_epochs = run_mlplab(config, args.epochs, before_epoch=lambda loop=plain_loop, out=plain_epochs: out.append(loop.epoch()))
            runs["b_hand_written"].append(plain_epochs[1:])
            runs["c_mlplab_fit"].append(fit_epochs[1:])
            runs["d_one_step_per_call"].append(run_mlplab(config, args.epochs, "--model.steps_per_call=1")[1:])
            if args.compile:
                runs["e_mlplab_compiled"].append(run_mlplab(config, args.epochs, "--model.compile=true")[1:])
        samples = {key: [epoch for run in key_runs for epoch in run] for key, key_runs in runs.items()}
        median = {key: statistics.median(values) for key, values in samples.items()}
        print(f"\n{name} (batch {batch}, {len(dm.splits['train'][0])} train + {len(dm.splits['val'][0])} val samples/epoch)")
        for key, value in median.items():
            spread = f"min {min(samples[key]):.3f} max {max(samples[key]):.3f}"
            print(f"  {key:19s} {value:7.3f} s/epoch  ({len(samples[key])} epochs, {spread})")
        print(
            f"  ratio c/b = {median['c_mlplab_fit'] / median['b_hand_written']:.3f}   ratio a/c = {median['a_seed_pipeline'] / median['c_mlplab_fit']:.2f}"
            f"   ratio a/b = {median['a_seed_pipeline'] / median['b_hand_written']:.2f} (a/c exceeds it only where (c) beats (b))"
        )
        run_medians = {key: [statistics.median(run) for run in key_runs] for key, key_runs in runs.items()}
        print(
            f"  paired: {paired_ratios(samples['c_mlplab_fit'], samples['b_hand_written'], 'c/b per epoch pair')}"
            f"   {paired_ratios(run_medians['a_seed_pipeline'], run_medians['c_mlplab_fit'], 'a/c per repetition')}"
            f"   {paired_ratios(run_medians['a_seed_pipeline'], run_medians['b_hand_written'], 'a/b per repetition')}"
        )
        print(
            f"  ratio d/c = {median['d_one_step_per_call'] / median['c_mlplab_fit']:.3f} (what grouping buys)"
            f"   {paired_ratios(run_medians['d_one_step_per_call'], run_medians['c_mlplab_fit'], 'd/c per repetition')}"
        )
        if args.compile:
            print(f"  ratio e/c = {median['e_mlplab_compiled'] / median['c_mlplab_fit']:.3f} (compiled vs eager mlplab)")
        if args.breakdown:
            print_breakdown(config, args.epochs)
    print(f"\npeak RSS of the benchmark process: {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
