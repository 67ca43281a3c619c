"""``@record`` behaves as ``@dataclass(frozen=True)``: the same equality, hash, repr and
immutability, field options honoured, methods a class writes kept; and it is what the receiver's
records use, so that their compiled methods are not held once per class."""

from __future__ import annotations

import dataclasses
import pickle
import sys
from dataclasses import FrozenInstanceError, dataclass, field
from typing import Any

import pytest

from receiver.core.record import record


def twins(body: dict[str, Any], *bases: type) -> tuple[type, type]:
    """The same class made by ``@dataclass(frozen=True)`` and by ``@record``."""
    annotations = body.get("__annotations__", {})
    made: list[type] = []
    for decorate in (dataclass(frozen=True), record):
        namespace = {**body, "__annotations__": dict(annotations), "__qualname__": "Thing"}
        made.append(decorate(type("Thing", bases, namespace)))
    return made[0], made[1]


FIELDS: dict[str, Any] = {
    "__annotations__": {"a": "int", "b": "str", "note": "str", "secret": "str"},
    "b": "x",
    "note": field(default="", compare=False),
    "secret": field(default="", repr=False),
}


def test_equality_hash_and_repr_are_those_of_a_frozen_dataclass() -> None:
    plain, shared = twins(FIELDS)
    cases = [
        ((1,), (1,)),
        ((1, "x", "n1"), (1, "x", "n2")),
        ((1, "x"), (2, "x")),
        ((1, "s", "", "k"), (1, "s", "", "l")),
    ]
    for left, right in cases:
        assert (plain(*left) == plain(*right)) == (shared(*left) == shared(*right))
        assert (plain(*left) != plain(*right)) == (shared(*left) != shared(*right))
        if plain(*left) == plain(*right):
            assert hash(shared(*left)) == hash(shared(*right))
        assert repr(plain(*left)) == repr(shared(*left))
    assert repr(shared(1, "x", "n", "hidden")) == "Thing(a=1, b='x', note='n')"
    assert shared(1) != plain(1)  # another class: never equal, as between two dataclasses
    assert shared(1).__eq__(1) is NotImplemented
    assert len({shared(1, "x", "n1"), shared(1, "x", "n2"), shared(2)}) == 2


def test_fields_cannot_be_assigned_or_deleted() -> None:
    _, shared = twins(FIELDS)
    thing = shared(1)
    with pytest.raises(FrozenInstanceError, match="cannot assign to field 'a'"):
        thing.a = 2
    with pytest.raises(FrozenInstanceError, match="cannot assign to field 'other'"):
        thing.other = 2
    with pytest.raises(FrozenInstanceError, match="cannot delete field 'a'"):
        del thing.a
    assert thing.a == 1


def test_a_plain_subclass_may_add_attributes_but_not_change_fields() -> None:
    _, shared = twins(FIELDS)
    sub = type("Sub", (shared,), {})(1)
    sub.extra = 5
    assert sub.extra == 5
    with pytest.raises(FrozenInstanceError):
        sub.a = 2


def test_records_with_no_field_and_one_field_compare_and_hash() -> None:
    empty_plain, empty = twins({})
    assert empty() == empty() and hash(empty()) == hash(empty())
    assert repr(empty()) == repr(empty_plain()) == "Thing()"
    _, one = twins({"__annotations__": {"a": "int"}})
    assert one(1) == one(1) != one(2)
    assert len({one(1), one(1), one(2)}) == 2


def test_replace_fields_asdict_pickle_and_inheritance_work() -> None:
    _, shared = twins(FIELDS)
    thing = shared(1, "y")
    assert dataclasses.replace(thing, a=3) == shared(3, "y")
    assert [f.name for f in dataclasses.fields(thing)] == ["a", "b", "note", "secret"]
    assert dataclasses.asdict(thing) == {"a": 1, "b": "y", "note": "", "secret": ""}
    sys.modules[__name__].Thing = shared  # type: ignore[attr-defined]  # pickle finds it by name
    assert pickle.loads(pickle.dumps(thing)) == thing  # noqa: S301  # our own bytes

    @record
    class Base:
        a: int

    @record
    class Child(Base):
        b: int = 0

    assert Child(1, 2) == Child(1, 2) != Child(1, 3)
    assert Base(1) != Child(1)
    assert repr(Child(1, 2)).endswith("Child(a=1, b=2)")


def test_methods_the_class_writes_are_kept() -> None:
    @record
    class Own:  # noqa: PLW1641  # dataclass adds the hash; so must record
        a: int

        def __eq__(self, other: object) -> bool:
            return True

        def __repr__(self) -> str:
            return "own"

    assert Own(1) == Own(2) and repr(Own(1)) == "own"
    assert hash(Own(1)) == hash(Own(1)) != hash(Own(2))  # dataclass adds the fields' hash too

    @record
    class OwnHash:
        a: int

        def __hash__(self) -> int:
            return 7

    assert hash(OwnHash(1)) == 7


def test_a_record_that_holds_itself_repr_does_not_recurse() -> None:
    @record
    class Box:
        items: list[Any]

    box = Box([])
    box.items.append(box)
    assert repr(box).endswith("Box(items=[...])")


def test_the_receivers_frozen_dataclasses_are_records() -> None:
    """Every frozen dataclass the daemon loads shares the methods (none compiled its own)."""
    import receiver.assembly
    import receiver.cli
    import receiver.runtime  # noqa: F401

    frozen = [
        value
        for name, module in list(sys.modules.items())
        if name.startswith("receiver")
        for value in vars(module).values()
        if isinstance(value, type)
        and value.__module__ == name
        and dataclasses.is_dataclass(value)
        and value.__dataclass_params__.frozen  # type: ignore[attr-defined]
    ]
    assert len(frozen) > 50
    own = [cls.__qualname__ for cls in frozen if "__record_compared__" not in cls.__dict__]
    assert own == [], f"frozen dataclasses that compile their own methods: {own}"
