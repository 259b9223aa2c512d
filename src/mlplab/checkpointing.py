"""Checkpoints that survive the process dying: atomic writes and a Ctrl-C that stops at a step boundary.

Lightning's ``TorchCheckpointIO`` serialises to memory and then writes the target file in place,
so a kill during the write leaves a truncated file under the real name (often ``last.ckpt``, the
only copy). :class:`AtomicCheckpointIO` writes a temporary file in the same folder, flushes it to
disk and renames it over the target: the old file stays whole until the new one is complete.

Lightning turns Ctrl-C into a ``KeyboardInterrupt`` wherever the main thread happens to be —
possibly between a backward pass and its optimizer step — and saves nothing.
:class:`GracefulInterrupt` defers the signal to the end of the current training step, writes a
resumable ``last.ckpt`` there (the loader's position, RNG state and metric sums included), then
lets Lightning shut down. ``--ckpt_path last`` continues exactly where it stopped.
"""

from __future__ import annotations

import io
import os
import pickle
import signal
import threading
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torchmetrics import Metric

from mlplab.data.idx import atomic_write_bytes
from mlplab.errors import ConfigError


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are all-or-nothing (temporary file, fsync, rename)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None) -> None:
        if "://" in str(path):  # remote file systems: Lightning's own writer
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        # serialised in memory first (as Lightning's own writer does): written by Python, a failed write raises the
        # OS's reason (torch.save into a file reports a full disk as "unexpected pos" in its zip writer)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(Path(path), buffer.getbuffer())


class ResumableProgress(LightningModule):
    """Mixin: what a resumed fit needs beyond Lightning's own checkpoint state to continue exactly.

    The torch RNG state (dropout, augmentation), the running epoch's metric sums (over all processes
    under DDP) and the step the epoch began at, saved as ``checkpoint["mlplab_progress"]``: tensors and plain numbers only, so
    checkpoints stay loadable with ``torch.load(weights_only=True)``. The host class provides
    ``resumable_metrics()`` (name -> metric, names as saved), ``before_saving_progress()`` and
    ``epoch_start_step``.
    """

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.before_saving_progress()
        metric_states = {}
        for name, metric in self.resumable_metrics().items():
            metric.persistent(True)
            # the sums over every process (torchmetrics' all-gather: every rank saves together): only rank 0's
            # checkpoint is written, and on resume rank 0 carries them on while the other ranks start from zero
            with metric.sync_context():
                metric_states[name] = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in metric.state_dict().items()}
            metric.persistent(False)
        checkpoint["mlplab_progress"] = {
            "torch_rng_state": torch.get_rng_state(),
            "cuda_rng_states": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
            "epoch_start_step": self.epoch_start_step,
            "metric_states": metric_states,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """When a fit resumes (not when a model is merely loaded), restore what :meth:`on_save_checkpoint` saved."""
        progress = checkpoint.get("mlplab_progress")
        if progress is None or self._trainer is None or self.trainer.state.fn != "fit":
            return
        torch.set_rng_state(progress["torch_rng_state"])
        if progress["cuda_rng_states"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(progress["cuda_rng_states"])
        self.epoch_start_step = progress["epoch_start_step"]
        metrics: dict[str, Metric] = self.resumable_metrics()
        for name, metric in metrics.items():
            if self.trainer.global_rank != 0:  # the saved sums are every process's: counted once, on rank 0
                metric.reset()
                continue
            metric.persistent(True)
            metric.load_state_dict(progress["metric_states"][name])
            metric.persistent(False)


class GracefulInterrupt(Callback):
    """On Ctrl-C (SIGINT) or SIGTERM during ``fit``: finish the current optimizer step, save ``last.ckpt``, stop.

    SIGTERM is what SLURM, Kubernetes and most schedulers send before they kill a preempted job: the
    run then exits with status 143 (128 + SIGTERM) so the scheduler sees a job that did not finish,
    and ``--ckpt_path last`` continues it exactly. Ctrl-C exits with Lightning's status 1. A second
    signal of the same kind goes to the previous handler (Lightning's: at once for Ctrl-C).

    A handler already installed for SIGUSR1 or SIGUSR2 when training starts — Lightning's SLURM
    auto-requeue handler, which saves ``hpc_ckpt_N.ckpt`` and runs ``scontrol requeue`` — is deferred
    the same way: run where the main thread happens to be, it would save a batch that was fetched
    but not trained on as served, and the requeued job would skip it.

    Several processes (DDP, several nodes): a signal may reach one rank or all of them, at different
    moments. After every training batch the ranks agree with one all-reduce (max) of what each has
    received, so all of them act after the same optimizer step: they save the same mid-epoch
    checkpoint and stop together with the same exit status. (Lightning's own SIGTERM handling raises
    on each rank after whichever batch it got the signal in; ranks that stop at different batches
    leave the others waiting in a collective.)
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    DEFERRED_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)

    def __init__(self) -> None:
        self.requested: int | None = None
        self.deferred: int | None = None  # a SIGUSR1/SIGUSR2 whose handler waits for the step to end
        self.previous_handlers: dict[int, Any] = {}

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.requested = self.deferred = None
        if threading.current_thread() is not threading.main_thread():
            return
        # (installed after Lightning's own SIGTERM handler, which would stop mid-validation without a checkpoint)
        self.previous_handlers = {signum: signal.signal(signum, self._request_stop) for signum in self.SIGNALS}
        for signum in self.DEFERRED_SIGNALS:
            if callable(signal.getsignal(signum)):
                self.previous_handlers[signum] = signal.signal(signum, self._defer)

    def _request_stop(self, signum: int, frame: Any) -> None:
        self.requested = signum
        signal.signal(signum, self.previous_handlers.pop(signum))

    def _defer(self, signum: int, frame: Any) -> None:
        self.deferred = signum

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._agree(trainer)
        if self.deferred is not None:
            signum, self.deferred = self.deferred, None
            handler = self.previous_handlers.get(signum)
            if callable(handler):
                handler(signum, None)
        if self.requested is not None:
            self._save(trainer, signal.Signals(self.requested).name)
            self._stop()

    def _agree(self, trainer: Trainer) -> None:
        """On several processes: make ``requested`` and ``deferred`` what any rank received (SIGTERM over SIGINT).

        Every rank calls this after the same batch, so the all-reduce (one per batch, beside DDP's own
        per-batch broadcast of Lightning's SIGTERM flag) cannot leave a rank waiting.
        """
        if trainer.world_size == 1:
            return
        received = torch.tensor([self.requested or 0, self.deferred or 0], device=trainer.strategy.root_device)
        requested, deferred = trainer.strategy.reduce(received, reduce_op="max").tolist()
        self.requested, self.deferred = int(requested) or None, int(deferred) or None

    def _save(self, trainer: Trainer, signal_name: str) -> None:
        folder = (
            Path(trainer.checkpoint_callback.dirpath) if trainer.checkpoint_callback else Path(trainer.default_root_dir) / "checkpoints"
        )
        path = folder / "last.ckpt"
        trainer.save_checkpoint(path)
        rank_zero_info(
            f"mlplab: {signal_name}: interrupted in epoch {trainer.current_epoch} after optimizer step {trainer.global_step}; "
            f"saved {path}. Resume with --ckpt_path last (same config) or --ckpt_path {path}."
        )

    def _stop(self) -> None:
        if self.requested == signal.SIGTERM:
            raise SIGTERMException  # the command exits with status 143 (mlplab.cli.main)
        raise KeyboardInterrupt

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # interrupted during the last validation: checkpoints are complete; skip what comes after fit
        self._restore_handlers()
        self._agree(trainer)
        if self.requested is not None:
            self._stop()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._restore_handlers()

    def _restore_handlers(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum, handler in self.previous_handlers.items():
                signal.signal(signum, handler)
        self.previous_handlers = {}


def check_checkpoint_file(path: str | os.PathLike) -> None:
    """ConfigError unless ``path`` is an existing checkpoint that loads with ``torch.load(weights_only=True)``.

    Unpickling runs code named in the file; weights-only loading accepts only tensors and plain
    data, which is all mlplab's checkpoints hold. Remote URLs are left to Lightning. A file that
    does not load is named with the other checkpoints of its folder that do, never skipped silently.
    """
    if "://" in str(path):
        return
    if not Path(path).is_file():
        raise ConfigError(
            f"ckpt_path={str(path)!r} does not exist. Give the path of a .ckpt file, or 'last' to resume this config's newest run."
        )
    problem = checkpoint_problem(Path(path))
    if problem is not None:
        loadable = [p.name for p in sorted(Path(path).parent.glob("*.ckpt")) if p != Path(path) and checkpoint_problem(p) is None]
        others = (
            f" Checkpoints in {Path(path).parent} that do load: {', '.join(loadable)}."
            if loadable
            else f" No other checkpoint in {Path(path).parent} loads."
        )
        raise ConfigError(problem.rstrip(".") + "." + others)


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` is not a checkpoint that loads safely, or None."""
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        # torch's weights-only unpickler names what it refused on a line of its own, after a generic preamble
        reason = next(
            (line for line in lines if line.startswith(("Trying to load", "Unsupported"))), lines[0] if lines else type(err).__name__
        )
        return (
            f"ckpt_path={str(path)!r} was refused: torch.load(weights_only=True) could not read it ({reason}). Either it is not a "
            "PyTorch file, or it holds pickled Python objects beyond tensors and plain data, which could run code when loaded. "
            "mlplab's checkpoints never need that; only load files from a source you trust, and re-save them as a plain state_dict."
        )
    except (RuntimeError, EOFError, OSError) as err:
        # (torch.load's EOFError on an empty file has no message of its own)
        detail = str(err).strip() or f"{type(err).__name__} after {path.stat().st_size} bytes"
        return f"ckpt_path={str(path)!r} is not a readable checkpoint (truncated, or not a PyTorch file): {detail}"
    return None
