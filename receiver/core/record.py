"""Records: the frozen dataclasses of the receiver, sharing one implementation of equality,
hashing, ``repr`` and immutability.

``dataclasses.dataclass(frozen=True)`` compiles five methods from source for every class
(``__eq__``, ``__hash__``, ``__repr__``, ``__setattr__``, ``__delattr__``): about 6 KiB of code
objects per class, which stay resident for as long as the daemon runs (about 0.55 MiB for the
90 records it loads, on a board whose memory is counted). ``@record`` keeps what
``dataclass`` does for the fields (the ``__init__``, defaults, ``field()``, ``replace``,
``fields``, ``asdict``) and gives every record the same five functions, which read the class's
fields through one ``operator.attrgetter`` per class made here.

The behaviour is ``dataclass(frozen=True)``'s: instances are equal when they are of the same
class and their compared fields are equal (``field(compare=False)`` is left out), the hash is
that of the hashed fields (``compare``, or ``hash=True``), ``repr`` shows the ``repr`` fields as
``Name(a=1, b='x')``, and assigning or deleting a field raises ``FrozenInstanceError``.
"""

from __future__ import annotations

import dataclasses
import reprlib
from collections.abc import Callable
from operator import attrgetter
from typing import Any, Final, TypeVar, dataclass_transform

__all__ = ["record"]

_T = TypeVar("_T")
_COMPARED: Final = "__record_compared__"
_HASHED: Final = "__record_hashed__"
_SHOWN: Final = "__record_shown__"


def _values(names: list[str]) -> Callable[[Any], Any]:
    """The named fields' values in one tuple, read in C. The class is added last because
    ``attrgetter`` of one name returns the bare value and of none cannot be made; equal for any
    two instances compared (they are of the same class)."""
    return attrgetter(*names, "__class__")


def _eq(self: Any, other: Any) -> Any:
    if other.__class__ is self.__class__:
        compared = getattr(self.__class__, _COMPARED)
        return bool(compared(self) == compared(other))
    return NotImplemented


def _hash(self: Any) -> int:
    return hash(getattr(self.__class__, _HASHED)(self))


@reprlib.recursive_repr()
def _repr(self: Any) -> str:
    shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in getattr(self.__class__, _SHOWN))
    return f"{self.__class__.__qualname__}({shown})"


def _frozen(self: Any, name: str) -> bool:
    """Whether ``name`` may not be assigned or deleted: any name on a record itself; a field's
    name on an instance of a plain subclass (as ``dataclass`` does)."""
    return _COMPARED in type(self).__dict__ or name in self.__dataclass_fields__


def _setattr(self: Any, name: str, value: Any) -> None:
    if _frozen(self, name):
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")
    object.__setattr__(self, name, value)


def _delattr(self: Any, name: str) -> None:
    if _frozen(self, name):
        raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")
    object.__delattr__(self, name)


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field,))
def record(cls: type[_T]) -> type[_T]:
    """``@dataclass(frozen=True)``, with the shared methods (see the module's docstring)."""
    own = dict(cls.__dict__)  # methods the class writes itself are kept, as dataclass does
    made = dataclasses.dataclass(frozen=True, eq=False, repr=False)(cls)
    fields = dataclasses.fields(made)  # type: ignore[arg-type]
    setattr(made, _COMPARED, _values([f.name for f in fields if f.compare]))
    hashed = [f.name for f in fields if (f.compare if f.hash is None else f.hash)]
    setattr(made, _HASHED, _values(hashed))
    setattr(made, _SHOWN, tuple(f.name for f in fields if f.repr))
    # __setattr__ and __delattr__ replace the two dataclass compiled (a class may not write them).
    shared = {"__setattr__": _setattr, "__delattr__": _delattr}
    if "__eq__" not in own:
        shared["__eq__"] = _eq
    if "__hash__" not in own or (own["__hash__"] is None and "__eq__" in own):
        shared["__hash__"] = _hash
    if "__repr__" not in own:
        shared["__repr__"] = _repr
    for name, method in shared.items():
        setattr(made, name, method)
    return made
