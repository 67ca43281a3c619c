"""receiver-admin's schema walker agrees with jsonschema on the project's schemas.

The walker exists so that the tool names each problem by its path without a dependency on the
board; this checks it against the reference implementation on valid payloads and on many broken
ones (every field dropped, retyped, emptied, or given an unknown sibling).
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Iterator
from typing import Any

import pytest

from receiver.central.signing import command_payload, schedule_payload, trust_payload
from receiver.central.validate import schema_problems
from tests.test_schemas import schema_accepts

SHA = "c" * 64
FILE = {"url": "https://m.example/a.mp3", "sha256": SHA, "size": 9, "title": "Tin sáng"}
ENTRY = {
    "id": "news",
    "days": ["mon", "fri"],
    "at": "06:30",
    "priority": "normal",
    "volume": 80,
    "valid_from": "2026-01-01",
    "source": {"files": [FILE]},
    "max_duration_s": 600,
}
SAMPLES: dict[str, list[dict[str, Any]]] = {
    "command": [
        command_payload(
            "play",
            {"priority": "emergency", "source": {"files": [FILE]}, "max_duration_s": 60},
            env="prod",
            aud=["grp:c-1", "dev:loa-001"],
        ),
        command_payload(
            "relay", {"name": "amp", "state": "on", "duration_s": 60}, env="p", aud=["dev:x"]
        ),
        command_payload("volume", {"level": 0}, env="prod", aud=["grp:a"]),
        command_payload("report", {}, env="prod", aud=["grp:a"]),
        command_payload("stop", {"target": "all"}, env="prod", aud=["grp:a"]),
    ],
    "schedule": [schedule_payload("morning", 2, [ENTRY], env="prod", aud=["grp:c-1"])],
    "trust": [
        trust_payload(
            3,
            [{"id": "op", "ed25519": "A" * 43 + "=", "roles": ["operator"], "scopes": ["*"]}],
            env="prod",
            thresholds={"operator": 1},
        )
    ],
}
ODD_VALUES: tuple[Any, ...] = (None, True, 0, -1, 10**20, 1.5, "", "x" * 300, "\x07", [], {})


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict):
        for key, sub in value.items():
            yield from _paths(sub, (*path, key))
    elif isinstance(value, list):
        for index, sub in enumerate(value):
            yield from _paths(sub, (*path, index))


def _mutations(payload: dict[str, Any], rng: random.Random) -> Iterator[dict[str, Any]]:
    for path in list(_paths(payload))[1:]:
        *parent_path, last = path
        for _ in range(3):
            changed = copy.deepcopy(payload)
            parent: Any = changed
            for part in parent_path:
                parent = parent[part]
            choice = rng.random()
            if choice < 0.2 and isinstance(parent, dict):
                del parent[last]
            elif choice < 0.3 and isinstance(parent, dict):
                parent["unknown_field"] = 1
            else:
                parent[last] = rng.choice(ODD_VALUES)
            yield changed


@pytest.mark.parametrize("kind", SAMPLES)
def test_the_walker_and_jsonschema_agree(kind: str) -> None:
    rng = random.Random(9)  # noqa: S311 - reproducible mutations, not a secret
    checked = 0
    for sample in SAMPLES[kind]:
        assert schema_problems(sample, f"{kind}.json") == []
        assert schema_accepts(f"{kind}.json", sample)
        for broken in _mutations(sample, rng):
            ours = schema_problems(broken, f"{kind}.json")
            reference = schema_accepts(f"{kind}.json", broken)
            assert (not ours) == reference, (json.dumps(broken), ours)
            checked += 1
    assert checked > 30
