"""What only one command needs is an optional extra of the package (``pip install 'mlplab[tune]'``); this names the missing one.

The core install carries what the importable modules need (the DataModules, the MLP, LitMLP, the
callbacks, the ``mlplab`` fit/validate/test/predict command). Each extra is looked up without importing
it (``importlib.util.find_spec``), so the check costs nothing on the command's start.
"""

from __future__ import annotations

import importlib.util

from mlplab.errors import MLPLabError

# extra -> the import names it provides (pyproject.toml's [project.optional-dependencies] installs them)
EXTRAS: dict[str, tuple[str, ...]] = {
    "tune": ("optuna", "optuna_integration"),
    "compare": ("optuna", "optuna_integration", "scipy"),
    "export": ("safetensors", "onnx", "onnxscript", "onnxruntime"),
    "postgres": ("psycopg",),
    "dashboard": ("optuna_dashboard",),
}


class MissingExtraError(MLPLabError, ImportError):
    """A command needs a package of an optional extra that this install lacks."""


def require_extra(extra: str, purpose: str, modules: tuple[str, ...] | None = None) -> None:
    """MissingExtraError naming ``extra`` unless every module it provides for ``purpose`` (all of them, or ``modules``) is importable."""
    missing = [name for name in (modules or EXTRAS[extra]) if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtraError(
            f"{purpose} needs {', '.join(missing)}, which this install of mlplab lacks; install the extra: pip install 'mlplab[{extra}]'."
        )
