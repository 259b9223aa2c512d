"""Names a package exports but imports only on first use (PEP 562), shared by ``mlplab`` and ``mlplab.cli``.

``import mlplab.cli`` for a command that does not train (``mlplab tune`` starting its trials' fork server,
``mlplab data``) then does not wait for torch and Lightning first.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``exports[name]`` (a module path) when ``name`` is first asked for."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
