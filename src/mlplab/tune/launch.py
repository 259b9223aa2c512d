"""How ``mlplab tune`` starts each trial's process, and how Ctrl-C reaches the study.

A trial is an ordinary ``mlplab fit`` in a process of its own (:mod:`mlplab.tune.trial`): a crash, a
divergence or leaked memory ends one trial, not the search. Two ways to start it (``--launch``):

- ``warm`` (the default): forked from a server process that imported torch, Lightning, Optuna and
  mlplab once, when the study started (Python's ``multiprocessing`` forkserver, with the trial
  module preloaded; the server is a fresh interpreter, so no torch thread pool exists in it before
  the fork). A trial then costs its own work — building its config, reading the data, training —
  and not a Python start and those imports (about 5 s each on two cores). Each trial kills itself
  when the tune process is gone (it watches that process's sentinel), so a SIGKILLed
  ``mlplab tune`` still takes its trials with it.
- ``process``: ``python -m mlplab.tune.trial fit ARGS`` from scratch. Used for trials that run on
  several devices or nodes, whose Lightning launcher re-runs the trial's own command line for its
  other ranks (a forked trial has no command line of its own to re-run).

Ctrl-C (SIGINT to the foreground process group) reaches the tune process and every trial. The tune
process only records it (:class:`CtrlC`): no exception interrupts it while it starts a trial,
waits for one or records one, so a trial's state is always written. A forked trial takes Python's
default SIGINT handler as its first step, as a trial started as a new process gets it: the fork
server hands its children the handling it started with, which is "ignored" when ``mlplab tune``
itself started with SIGINT ignored (a background job of a shell script), and the trial would then
miss every Ctrl-C until its fit installs its own handler. A trial that is being forked when the
signal comes, before that handler is in place, finds the request in a shared flag and stops.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import multiprocessing
import multiprocessing.connection
import multiprocessing.forkserver
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# named, not imported: the trial module is the child's (importing it here would tie the tune process to mlplab.cli)
TRIAL_MODULE = "mlplab.tune.trial"
WARM_UP_MODULE = "mlplab.tune.warm"  # builds the study's config once in the server (see that module)
WARM_UP_ENV = "MLPLAB_TUNE_WARM_UP"
TRIAL_ENV = "MLPLAB_TRIAL"  # the plain process's trial spec (JSON)
LAUNCHES = ("warm", "process")


class CtrlC:
    """SIGINT recorded as a flag in the tune process (and in a flag the forked trials can read), never raised."""

    def __init__(self, shared: Any | None) -> None:
        self.requested = threading.Event()
        self.shared = shared  # a multiprocessing Event of the forkserver context, or None

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested.set()
        if self.shared is not None:
            self.shared.set()

    @contextlib.contextmanager
    def installed(self) -> Iterator[CtrlC]:
        """Take SIGINT for the duration of the study (main thread only; elsewhere the caller's handling stays)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGINT, self._handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


class TrialProcess:
    """A started trial: its pid, and its exit status once it ends."""

    def __init__(self, process: Any, log: Any) -> None:
        self.process, self.log = process, log
        self.pid: int = process.pid

    def wait(self) -> int:
        """The exit status: the code the trial exited with, or minus the signal that killed it."""
        try:
            if isinstance(self.process, subprocess.Popen):
                return self.process.wait()
            self.process.join()
            return self.process.exitcode
        finally:
            if self.log is not None:
                self.log.close()


class TrialLauncher:
    """Starts trial processes the ``launch`` way (``warm`` or ``process``) with ``threads`` torch threads each (None: all cores)."""

    def __init__(self, launch: str, threads: int | None, fit_args: list[str]) -> None:
        self.launch, self.threads = launch, threads
        self.context = None
        shared = None
        if launch == "warm":
            self.context = multiprocessing.get_context("forkserver")
            self.context.set_forkserver_preload([TRIAL_MODULE, WARM_UP_MODULE])
            # start the server now: its imports and warm-up (seconds) run while the tune process checks the space and
            # opens the study, instead of before the first trial (the module-level function of Python's forkserver
            # module; the server takes this process's environment when it starts, the warm-up's arguments with it)
            os.environ[WARM_UP_ENV] = json.dumps(fit_args)
            try:
                multiprocessing.forkserver.ensure_running()
            finally:
                del os.environ[WARM_UP_ENV]
            shared = self.context.Event()
        self.ctrl_c = CtrlC(shared)

    @classmethod
    def for_workers(cls, launch: str, workers: int, fit_args: list[str]) -> TrialLauncher:
        """The launcher of ``workers`` trials at a time: they share the cores instead of each taking all of them."""
        threads = max(1, len(os.sched_getaffinity(0)) // workers) if workers > 1 else None
        return cls(launch, threads, fit_args)

    def start(self, argv: list[str], spec: dict[str, Any], log_path: Path, plain: bool = False) -> TrialProcess:
        """Start one trial: ``mlplab fit`` with ``argv``, reporting to the trial in ``spec``, its output in ``log_path``."""
        if self.context is None or plain:
            return self._start_process(argv, spec, log_path)
        process = self.context.Process(
            target=run_forked_trial, args=(argv, spec, str(log_path), self.threads, self.ctrl_c.shared), name=f"trial {spec['trial_id']}"
        )
        process.start()
        return TrialProcess(process, None)

    def _start_process(self, argv: list[str], spec: dict[str, Any], log_path: Path) -> TrialProcess:
        env = {**os.environ, TRIAL_ENV: json.dumps(spec)}
        if self.threads is not None:  # read by torch when the new process imports it
            env.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        log = log_path.open("w")
        try:
            process = subprocess.Popen([sys.executable, "-m", TRIAL_MODULE, *argv], stdout=log, stderr=subprocess.STDOUT, env=env)
        except BaseException:
            log.close()
            raise
        return TrialProcess(process, log)


def end_with_the_tune_process() -> None:
    """In a forked trial: SIGKILL itself as soon as the tune process that asked for it has ended, however it ended.

    (``PR_SET_PDEATHSIG`` would watch the fork server, which outlives the tune process while any trial runs:
    every process forked from it holds the pipe that keeps it alive. ``multiprocessing.parent_process()`` is the
    tune process, and its sentinel becomes ready when that process is gone.)
    """
    sentinel = multiprocessing.parent_process().sentinel

    def watch() -> None:
        multiprocessing.connection.wait([sentinel])
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="end with mlplab tune", daemon=True).start()


def run_forked_trial(argv: list[str], spec: dict[str, Any], log_path: str, threads: int | None, ctrl_c: Any) -> None:
    """In the forked trial process: what ``python -m mlplab.tune.trial`` does, after what a new process gets for free.

    Its output goes to the trial's log; its torch threads are set before the first torch operation
    creates the pool; Ctrl-C raises KeyboardInterrupt, as in a new process, and one that came while it
    was being forked (before that handler was in place) stops it here.
    """
    # (the fork server ignores SIGINT, and restores in its children the handler it was started with: SIG_IGN
    # when the tune process was started with SIGINT ignored)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    trial = importlib.import_module(TRIAL_MODULE)
    end_with_the_tune_process()
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    sys.stdout.flush(), sys.stderr.flush()
    os.dup2(log, 1), os.dup2(log, 2)
    os.close(log)
    if ctrl_c is not None and ctrl_c.is_set():
        print("mlplab: trial not started: Ctrl-C was pressed while it was being started", flush=True)
        sys.exit(130)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    sys.argv = ["mlplab", *argv]
    trial.run_trial(argv, spec)
