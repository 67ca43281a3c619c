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
it is loaded a moment later. :func:`defer_when_imported` arranges the deferral for the moment a
given module (structlog) is first imported, whoever imports it first.

The stand-in carries the real module's spec and file, so ``importlib.util.find_spec`` and
``inspect.getmodule`` answer without loading it. It has no ``__path__``: a submodule import
(``from asyncio.events import ...``) reads that, which loads the package, whose ``__init__``
may import the very submodule asked for. The import system had looked for that submodule in
``sys.modules`` just before and does not look again, so :class:`_Finder` (first on
``sys.meta_path``) hands back the module the package loaded instead of letting it run twice.

(``importlib.util.LazyLoader`` does not do this on Python 3.11: ``import`` of a module already
in ``sys.modules`` reads its ``__spec__``, which makes the lazy module load at once.)
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import threading
import types
from collections.abc import Sequence

TYPE_CHECKING = False  # not typing's: every process of ours imports this module, the player's
if TYPE_CHECKING:  # idle child too, which does without typing
    from typing import Any

__all__ = ["defer", "defer_when_imported"]

_LOCK = threading.RLock()  # one real import at a time, whichever thread touches a stand-in
# Only plain set and dict operations under this one (atomic under the GIL): the finder runs
# with the import system's global lock held and must never wait for _LOCK.
_deferred: set[str] = set()  # every name defer() has stood in for, loaded since or not
_triggers: dict[str, list[str]] = {}  # module -> names to defer just before it is imported


class _StandIn(types.ModuleType):
    """What ``import name`` binds until the real module is needed."""

    def __init__(self, spec: importlib.machinery.ModuleSpec) -> None:
        super().__init__(spec.name, f"stand-in for {spec.name}, imported on first use")
        # The import system reads __spec__ (``_initializing``) without loading the module;
        # find_spec() returns it and inspect.getmodule() asks for __file__.
        self.__spec__ = spec
        self.__loader__ = spec.loader
        if spec.has_location and spec.origin is not None:
            self.__file__ = spec.origin

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


class _AlreadyLoaded:
    """Loader for a module that is in ``sys.modules`` already: gives it back, runs nothing."""

    @staticmethod
    def create_module(spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = sys.modules[spec.name]
        spec.loader_state = module.__spec__  # the import system overwrites __spec__ with ours
        return module

    @staticmethod
    def exec_module(module: types.ModuleType) -> None:
        module.__spec__ = module.__spec__.loader_state  # type: ignore[union-attr]


class _Finder:
    """First on ``sys.meta_path``: defers what a module's import waits for, and answers for a
    deferred package's submodule that loading the package has loaded already."""

    @staticmethod
    def find_spec(
        fullname: str, path: Sequence[str] | None = None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        for name in _triggers.pop(fullname, ()):
            defer(name)
        # Reached with the submodule in sys.modules only when reading the package's __path__
        # loaded it (an import; a reload passes its target).
        package, dot, _ = fullname.partition(".")
        if (
            dot
            and target is None
            and package in _deferred
            and fullname in sys.modules
            and getattr(sys.modules[fullname], "__spec__", None) is not None
        ):
            return importlib.machinery.ModuleSpec(fullname, _AlreadyLoaded)  # type: ignore[arg-type]
        return None


def _install_finder() -> None:
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def defer(name: str) -> None:
    """Load top-level module ``name`` only when it is first used (nothing to do if it is
    loaded already, was deferred before or does not exist)."""
    if "." in name:
        raise ValueError(f"defer() takes a top-level module name, not {name!r}")
    if name in sys.modules or name in _deferred:
        return
    spec = importlib.util.find_spec(name)  # finds, does not load
    if spec is None:
        return  # the import will say it is missing, as without defer()
    _install_finder()
    if sys.modules.setdefault(name, _StandIn(spec)).__class__ is _StandIn:
        _deferred.add(name)


def defer_when_imported(trigger: str, name: str) -> None:
    """Defer ``name`` just before module ``trigger`` is first imported, by whichever code."""
    if trigger in sys.modules:
        return  # imported already, and with it whatever it imports
    _triggers.setdefault(trigger, []).append(name)
    _install_finder()
