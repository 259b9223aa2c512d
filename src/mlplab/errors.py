"""Exceptions that carry a message meant for the user.

The command-line entry point prints these as one paragraph and exits non-zero instead of
showing a traceback; library users can catch them like any other ``ValueError``/``OSError``.
"""


class MLPLabError(Exception):
    """Base class for errors whose message alone tells the user what to fix."""


class ConfigError(MLPLabError, ValueError):
    """An option has a value that is not allowed."""


class DataError(MLPLabError, OSError):
    """A data file is missing, unreadable, corrupt or fails its checksum."""


class TrainingDivergedError(MLPLabError, ArithmeticError):
    """The training loss became NaN or infinite; training stopped before saving non-finite weights."""
