"""Which embedded Optuna storage holds up with several local workers: SQLite or the journal file.

K processes join one study at once and each runs trials that report intermediate values (as
`mlplab tune`'s trial processes do at every validation); the script counts trials that
finished, storage errors, and the wall time, for each storage. Run:

    python benchmarks/tune_storage.py --workers 4 --trials 40
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from pathlib import Path

import optuna


def open_storage(kind: str, folder: Path) -> optuna.storages.BaseStorage | str:
    if kind == "sqlite":
        return f"sqlite:///{folder / 'study.db'}"
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(folder / "study.journal")))


def objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -10, 10)
    for step in range(5):
        trial.report(x * x + step, step)
    return x * x


def worker(kind: str, folder: str, trials: int, errors: multiprocessing.Queue) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    count = 0
    for _ in range(trials):
        try:
            study = optuna.load_study(study_name="bench", storage=open_storage(kind, Path(folder)))
            study.optimize(objective, n_trials=1)
        except Exception as err:  # what this script counts: any storage failure
            count += 1
            errors.put(f"{type(err).__name__}: {str(err).splitlines()[0][:120]}")
    errors.put(count)


def run(kind: str, workers: int, trials: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        optuna.create_study(study_name="bench", storage=open_storage(kind, Path(folder)))
        queue = multiprocessing.get_context("spawn").Queue()
        processes = [
            multiprocessing.get_context("spawn").Process(target=worker, args=(kind, folder, trials, queue)) for _ in range(workers)
        ]
        started = time.perf_counter()
        for p in processes:
            p.start()
        for p in processes:
            p.join()
        seconds = time.perf_counter() - started
        failures, messages = 0, set()
        while not queue.empty():
            item = queue.get()
            if isinstance(item, int):
                failures += item
            else:
                messages.add(item)
        study = optuna.load_study(study_name="bench", storage=open_storage(kind, Path(folder)))
        done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
        print(
            f"{kind:8s} workers={workers} trials={workers * trials} complete={done} errors={failures} wall={seconds:.1f} s {sorted(messages)[:2]}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--trials", type=int, default=40)
    options = parser.parse_args()
    for kind in ("sqlite", "journal"):
        run(kind, options.workers, options.trials)
