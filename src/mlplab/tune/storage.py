"""Where a study lives: an embedded SQLite file by default, any SQLAlchemy URL to share it between machines.

Why SQLite rather than Optuna's journal file for the embedded default: both held up with several local
workers in ``benchmarks/tune_storage.py`` (8 processes x 30 trials that report intermediate values:
no errors with either; SQLite 29 s, journal 5 s, i.e. about 0.1 s of storage work per trial, under 1 %
of a trial here). SQLite is an RDB storage, so Optuna's heartbeat marks the trial of a killed worker
failed (Optuna 5's JournalStorage has no heartbeat), and optuna-integration's pruning callback accepts it
when a trial itself runs on several processes (DDP).
"""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

import optuna
import sqlalchemy

from mlplab.errors import ConfigError
from mlplab.extras import require_extra

CREATE_ATTEMPTS = 5
TABLE_CREATION_RACE = (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.InternalError)


def embedded_url(folder: Path) -> str:
    """The default storage: ``<folder>/study.db``."""
    return f"sqlite:///{folder / 'study.db'}"


def shown(url: str) -> str:
    """``url`` as given, with its password (``scheme://user:PASSWORD@host``) hidden, for messages."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def open_storage(url: str, heartbeat_interval: int | None = None, prepared: bool = False) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage at ``url``; ConfigError naming the URL when it cannot be opened.

    ``prepared``: the tables exist and their version was checked (by the tune process that started this trial),
    so Optuna skips both (about a quarter of a second per trial).

    ``heartbeat_interval`` (seconds) for the process that runs trials: a trial whose process stopped
    sending heartbeats for three intervals is marked failed by the next process that starts one.
    """
    if url.startswith(("postgresql://", "postgresql+psycopg://")):  # (SQLAlchemy's default PostgreSQL driver is psycopg 3)
        require_extra("postgres", f"--storage {shown(url)!r}")
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    grace_period = None if heartbeat_interval is None else 3 * heartbeat_interval
    attempt = 1
    while True:
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs, skip_compatibility_check=prepared, skip_table_creation=prepared,
                heartbeat_interval=heartbeat_interval, grace_period=grace_period,
            )  # fmt: skip
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as err:
            if isinstance(err, TABLE_CREATION_RACE) and attempt < CREATE_ATTEMPTS:
                # processes that join an empty database at the same moment all create Optuna's tables; the losers of
                # that race fail on a duplicate table or type, and find the tables there when they try again
                attempt += 1
                time.sleep(1.0 + random.random())
                continue
            reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
            raise ConfigError(
                f"--storage {shown(url)!r} cannot be opened: {reason}. Give an SQLAlchemy URL that this machine can reach "
                "(postgresql://USER:PASSWORD@HOST/DB, mysql+pymysql://..., sqlite:///PATH), or leave --storage out for "
                "the embedded SQLite file under the study's folder."
            ) from err
