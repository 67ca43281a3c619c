"""Deferred modules: a module that libraries import but the daemon does not use is loaded only
when something first touches it.

Every module a process imports stays resident for its life. structlog imports :mod:`asyncio`
at the top of two of its modules for the async logging methods (``ainfo``, ...), which the
daemon never calls; asyncio and what it pulls in (its C accelerator, its event loops and
subprocess support) hold about 2 MiB (``bench/footprint.py``). :func:`defer` puts a stand-in
under the module's name in ``sys.modules``: ``import asyncio`` then binds the stand-in, and the
first attribute read from it (``asyncio.get_running_loop``, ``from asyncio import ...``, a
submodule import) imports the real module, fills the stand-in with its namespace and leaves the
real module in ``sys.modules``. Nothing changes for code that does use the module, except that
it is loaded a moment later.

(``importlib.util.LazyLoader`` does not do this on Python 3.11: ``import`` of a module already
in ``sys.modules`` reads its ``__spec__``, which makes the lazy module load at once.)
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import threading
import types
from typing import Any

__all__ = ["defer"]

_LOCK = threading.RLock()  # one real import at a time, whichever thread touches a stand-in


class _StandIn(types.ModuleType):
    """What ``import name`` binds until the real module is needed."""

    def __init__(self, name: str) -> None:
        super().__init__(name, f"stand-in for {name}, imported on first use (receiver.deferred)")
        # Read by the import system (``__spec__._initializing``) without loading the module.
        self.__spec__ = importlib.machinery.ModuleSpec(name, None)

    def __getattr__(self, attribute: str) -> Any:
        """Called only for what the stand-in lacks: load the real module, then read from it."""
        with _LOCK:
            if sys.modules.get(self.__name__) is self:
                del sys.modules[self.__name__]
                try:
                    real = importlib.import_module(self.__name__)
                except BaseException:
                    sys.modules[self.__name__] = self
                    raise
                # Whoever bound the stand-in now sees the real module's names.
                self.__dict__.update(real.__dict__)
        return getattr(sys.modules[self.__name__], attribute)


def defer(name: str) -> None:
    """Load module ``name`` only when it is first used (nothing to do if it is loaded already)."""
    with _LOCK:
        if name not in sys.modules:
            sys.modules[name] = _StandIn(name)
