"""The machine-readable protocol in ``schemas/`` agrees with the code and with docs/protocol.md.

- Every JSON Schema is a valid draft 2020-12 schema and every ``$ref`` in it resolves.
- The AsyncAPI document parses as YAML and every ``$ref`` in it resolves to a file in schemas/.
- What ``receiver.central.signing`` and ``receiver-admin`` produce validates against the envelope
  schema, and its payload against the command schema.
- The bounds agree: a payload at each bound is accepted by both the schema and the receiver's own
  parser, one past it is refused by both (and the receiver gives the reason the doc says).
- What the daemon really publishes (state and events, during a play, rejections and failures)
  validates against the state and event schemas.
"""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped,unused-ignore]
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from referencing import Registry, Resource
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

from receiver.central import admin
from receiver.central.signing import SigningKey, command_payload, sign, sign_command
from receiver.core import commands, reasons
from receiver.core.envelope import (
    COMMAND_TYPE,
    MAX_MESSAGE_BYTES,
    SCHEDULE_TYPE,
    TRUST_TYPE,
    pae,
    parse_envelope,
    verified_signers,
)
from receiver.core.reasons import Rejection
from receiver.core.schedule import parse_schedule
from receiver.core.strict_json import loads_strict
from receiver.core.trust import Keyring, key_from_config
from receiver.core.trustdoc import parse_trust
from tests.e2e.conftest import Site, site, start_daemon, watcher
from tests.lab.audio import write_tone
from tests.lab.broker import Received, Subscriber
from tests.lab.daemon import DEVICE, GROUP, Daemon

# The e2e fixtures, imported so that pytest finds them for this module too.
__all__ = ["site", "start_daemon", "watcher"]

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "schemas"
DOC = ROOT / "docs" / "protocol.md"
BASE = "https://loa-receiver.invalid/schemas/v1/"
SCHEMA_NAMES = (
    "common", "envelope", "command", "schedule", "trust", "state", "event", "report",
)  # fmt: skip
DRAFT = "https://json-schema.org/draft/2020-12/schema"

IAT = "2026-03-01T05:30:00Z"
EXP = "2026-03-01T05:35:00Z"
SHA = "ab" * 32
URL = "https://media.example.vn/a.mp3"

# --- loading and validating ------------------------------------------------------------------


def _load(name: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads((SCHEMAS / f"{name}.json").read_text(encoding="utf-8"))
    return value


@functools.cache
def _registry() -> Registry[Any]:
    return Registry().with_resources(
        (BASE + f"{name}.json", Resource.from_contents(_load(name), DRAFT202012))
        for name in SCHEMA_NAMES
    )


@functools.cache
def _validator(ref: str) -> Any:
    """A validator for ``ref`` (``command.json`` or ``state.json#/$defs/online``)."""
    return jsonschema.Draft202012Validator({"$ref": BASE + ref}, registry=_registry())


def schema_errors(ref: str, instance: Any) -> list[str]:
    return [
        f"{'/'.join(str(p) for p in error.absolute_path)}: {error.message}"
        for error in _validator(ref).iter_errors(instance)
    ]


def schema_accepts(ref: str, instance: Any) -> bool:
    return not schema_errors(ref, instance)


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _resolve_local(document: Any, ref: str) -> Any:
    assert ref.startswith("#/"), ref
    return _pointer(document, ref[1:])


def _pointer(document: Any, pointer: str) -> Any:
    """Resolve a JSON pointer (``/a/b``, RFC 6901) in ``document``; KeyError/IndexError if not."""
    node = document
    for raw in pointer.split("/")[1:] if pointer else []:
        part = raw.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


# --- the schemas themselves ------------------------------------------------------------------


def test_schemas_directory_holds_exactly_the_documented_files() -> None:
    assert sorted(p.stem for p in SCHEMAS.glob("*.json")) == sorted(SCHEMA_NAMES)
    text = DOC.read_text(encoding="utf-8")
    for name in SCHEMA_NAMES:
        assert f"schemas/{name}.json" in text


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_every_schema_is_a_valid_2020_12_schema(name: str) -> None:
    schema = _load(name)
    assert schema["$schema"] == DRAFT
    assert schema["$id"] == BASE + f"{name}.json"
    jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_every_ref_in_a_schema_resolves(name: str) -> None:
    schema = _load(name)
    resolver = _registry().resolver(base_uri=schema["$id"])
    refs = list(_refs(schema))
    for ref in refs:
        try:
            resolver.lookup(ref)
        except Unresolvable as exc:  # pragma: no cover - the failure message
            pytest.fail(f"{name}.json: $ref {ref!r} does not resolve: {exc}")
    if name != "common":
        assert refs, f"{name}.json uses no shared definition"


def test_the_reason_codes_of_the_schema_are_the_codes_of_the_code() -> None:
    assert set(_load("common")["$defs"]["reason"]["enum"]) == reasons.ALL_REASONS
    text = DOC.read_text(encoding="utf-8")
    for code in reasons.ALL_REASONS:
        assert f"| `{code}` |" in text, f"reason {code} is not in the table of docs/protocol.md"


def test_the_payload_types_of_the_schema_are_the_types_of_the_code() -> None:
    envelope = _load("envelope")
    assert set(envelope["properties"]["payloadType"]["enum"]) == {
        COMMAND_TYPE,
        SCHEDULE_TYPE,
        TRUST_TYPE,
    }


# --- the AsyncAPI document -------------------------------------------------------------------


@functools.cache
def _asyncapi() -> dict[str, Any]:
    value: dict[str, Any] = yaml.safe_load((SCHEMAS / "asyncapi.yaml").read_text("utf-8"))
    return value


def test_asyncapi_parses_and_describes_the_topics_of_the_protocol() -> None:
    doc = _asyncapi()
    assert doc["asyncapi"] == "3.0.0"
    addresses = {channel["address"] for channel in doc["channels"].values()}
    assert addresses == {
        "{prefix}/dev/{device}/cmd",
        "{prefix}/grp/{group}/cmd",
        "{prefix}/grp/{group}/schedule",
        "{prefix}/trust",
        "{prefix}/dev/{device}/state",
        "{prefix}/dev/{device}/events",
    }
    for name, channel in doc["channels"].items():
        in_address = set(re.findall(r"\{(\w+)\}", channel["address"]))
        assert set(channel.get("parameters", {})) == in_address, name
    assert doc["components"]["parameters"]["prefix"]["default"] == "loa/v1"
    # The device's view: it receives what central sends and sends its state and events.
    actions = {
        _resolve_local(doc, op["channel"]["$ref"])["address"]: op["action"]
        for op in doc["operations"].values()
    }
    assert actions == {
        "{prefix}/dev/{device}/cmd": "receive",
        "{prefix}/grp/{group}/cmd": "receive",
        "{prefix}/grp/{group}/schedule": "receive",
        "{prefix}/trust": "receive",
        "{prefix}/dev/{device}/state": "send",
        "{prefix}/dev/{device}/events": "send",
    }
    for op in doc["operations"].values():
        assert op["bindings"]["mqtt"]["qos"] == 1
    will = doc["servers"]["broker"]["bindings"]["mqtt"]
    assert will["cleanSession"] is False and will["lastWill"]["retain"] is True


def test_every_ref_in_the_asyncapi_document_resolves() -> None:
    doc = _asyncapi()
    refs = list(_refs(doc))
    external = [ref for ref in refs if not ref.startswith("#")]
    assert external, "the AsyncAPI document references no schema file"
    for ref in refs:
        target, _, fragment = ref.partition("#")
        if not target:
            _pointer(doc, fragment)  # raises if the local reference is dangling
            continue
        path = (SCHEMAS / target).resolve()
        assert path.parent == SCHEMAS.resolve() and path.is_file(), ref
        _pointer(json.loads(path.read_text("utf-8")), fragment)
    referenced = {Path(ref.partition("#")[0]).stem for ref in external}
    assert referenced == set(SCHEMA_NAMES) - {"common"}


def test_the_asyncapi_examples_validate_and_the_worked_example_verifies() -> None:
    messages = _asyncapi()["components"]["messages"]
    example = messages["command"]["examples"][0]["payload"]
    assert schema_accepts("envelope.json", example)
    raw = json.dumps(example, separators=(",", ":")).encode()
    # docs/protocol.md shows the same envelope, byte for byte.
    assert raw.decode() in DOC.read_text(encoding="utf-8")
    # Signed with the key of RFC 8032 section 7.1, test 1: it verifies with the receiver's code.
    seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    public = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    assert Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw() == public
    envelope = parse_envelope(raw)
    keyring = Keyring((key_from_config("central-op-1", public, ["operator"], ["*"], None),))
    assert len(verified_signers(envelope, keyring)) == 1
    assert pae(envelope.payload_type, envelope.body).startswith(
        b"DSSEv1 35 application/vnd.loa.command.v1+json 161 {"
    )
    payload = loads_strict(envelope.body)
    assert schema_accepts("command.json", payload)
    commands.parse_command(payload, commands.parse_header(payload))
    offline = messages["offline"]["examples"][0]["payload"]
    assert schema_accepts("report.json", offline)
    assert schema_accepts("state.json", json.loads(base64.b64decode(offline["payload"])))


# --- what the central side's code produces ---------------------------------------------------


def _check_signed(envelope_bytes: bytes) -> dict[str, Any]:
    """Validate an envelope and its payload against the schemas and the receiver's parser."""
    assert len(envelope_bytes) <= MAX_MESSAGE_BYTES
    envelope = json.loads(envelope_bytes)
    assert schema_errors("envelope.json", envelope) == []
    parsed = parse_envelope(envelope_bytes)
    payload: dict[str, Any] = loads_strict(parsed.body)
    assert schema_errors("command.json", payload) == []
    commands.parse_command(payload, commands.parse_header(payload))
    return payload


FULL_PLAY = {
    "priority": "emergency",
    "source": {
        "files": [
            {"url": URL, "sha256": SHA, "size": 1234, "title": "Bản tin sáng"},
            {"url": URL + "?x=1", "sha256": "cd" * 32, "size": 99},
        ]
    },
    "start_at": "2026-03-01T12:30:00.250+07:00",
    "volume": 80,
    "repeat": 3,
    "max_duration_s": 1800,
}


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("play", FULL_PLAY),
        ("play", {"priority": "normal", "source": {"stream": {"url": URL}}, "max_duration_s": 60}),
        ("stop", {"target": "all"}),
        ("stop", {"target": "cmd-1772343000000"}),
        ("volume", {"level": 0}),
        ("relay", {"name": "amp", "state": "on", "duration_s": 600}),
        ("relay", {"name": "amp", "state": "auto"}),
        ("report", {}),
    ],
)
def test_what_receiver_signing_produces_validates(kind: str, body: dict[str, Any]) -> None:
    keys = [SigningKey.generate("op-1"), SigningKey.generate("em-1")]
    payload = command_payload(kind, body, env="prod", aud=["grp:commune-25-07873", "dev:loa-1"])
    assert _check_signed(sign_command(payload, keys)) == payload


def _an_hour_ahead() -> str:
    """A start time receiver-admin sends (it refuses one in the past, as a mistyped date)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() + 3600))


def _admin_argv(kind: str, key: Path, media: Path) -> list[str]:
    common = ["--key", str(key), "--env", "lab", "--aud", f"dev:{DEVICE}", "--aud", f"grp:{GROUP}"]
    if kind == "play":
        return [
            "play", *common, "--url", URL, "--file", str(media), "--title", "Bản tin",
            "--priority", "priority", "--volume", "60", "--repeat", "2", "--max-duration", "900",
            "--start-at", _an_hour_ahead(), "--id", "morning:1",
        ]  # fmt: skip
    if kind == "stream":
        return ["stream", *common, "--url", "https://radio.example.vn/live", "--ttl", "60"]
    if kind == "stop":
        return ["stop", *common, "--target", "morning:1", "--seq", "0"]
    if kind == "volume":
        return ["volume", *common, "--level", "100"]
    return ["report", *common]


@pytest.mark.parametrize("kind", ["play", "stream", "stop", "volume", "report"])
def test_what_receiver_admin_prints_validates(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "op.pem"
    SigningKey.generate("op-admin").save(key)
    media = tmp_path / "bulletin.mp3"
    media.write_bytes(b"ID3 not really audio" * 100)
    assert admin.main(_admin_argv(kind, key, media)) == 0
    printed = capsys.readouterr().out
    assert printed.endswith("\n") and printed.count("\n") == 1
    payload = _check_signed(printed.strip().encode("utf-8"))
    assert payload["type"] == ("play" if kind == "stream" else kind)


# --- the bounds: the schema and the receiver's parser agree ----------------------------------

Mutation = Callable[[dict[str, Any]], None]

BASE_BODIES: dict[str, dict[str, Any]] = {
    "play": {
        "priority": "normal",
        "source": {"files": [{"url": URL, "sha256": SHA, "size": 10, "title": "t"}]},
        "max_duration_s": 60,
    },
    "stream": {"priority": "normal", "source": {"stream": {"url": URL}}, "max_duration_s": 60},
    "stop": {"target": "all"},
    "volume": {"level": 40},
    "relay": {"name": "amp", "state": "off"},
    "report": {},
}


def _command(kind: str) -> dict[str, Any]:
    return {
        "id": "cmd-1",
        "seq": 1,
        "iat": IAT,
        "exp": EXP,
        "env": "lab",
        "aud": [f"dev:{DEVICE}"],
        "type": "play" if kind == "stream" else kind,
        "body": copy.deepcopy(BASE_BODIES[kind]),
    }


def _set(path: str, value: Any) -> Mutation:
    """Set (or with ``...`` delete) the member at a dotted path; numbers index lists."""

    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if value is ...:
            del node[last]
        elif last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def _both(first: Mutation, second: Mutation) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        first(doc)
        second(doc)

    return mutate


def _file(n: int) -> dict[str, Any]:
    return {"url": f"{URL}?n={n}", "sha256": f"{n:064x}", "size": n + 1}


def code_verdict(doc: Any) -> str | None:
    """The reason the receiver's parser refuses ``doc`` with, or None if it accepts it."""
    try:
        commands.parse_command(doc, commands.parse_header(doc))
    except Rejection as rejection:
        return rejection.reason
    return None


OK, MALFORMED, BAD_BODY = None, reasons.MALFORMED, reasons.BAD_BODY
MAX_INT = 2**63 - 1

BOUNDS: list[tuple[str, str, Mutation, str | None]] = [
    # the header
    ("seq 0", "report", _set("seq", 0), OK),
    ("seq 2^63-1", "report", _set("seq", MAX_INT), OK),
    ("seq -1", "report", _set("seq", -1), MALFORMED),
    ("seq 2^63", "report", _set("seq", MAX_INT + 1), MALFORMED),
    ("seq true", "report", _set("seq", True), MALFORMED),
    ("seq string", "report", _set("seq", "1"), MALFORMED),
    ("seq missing", "report", _set("seq", ...), MALFORMED),
    ("id 64", "report", _set("id", "a" * 64), OK),
    ("id 65", "report", _set("id", "a" * 65), MALFORMED),
    ("id empty", "report", _set("id", ""), MALFORMED),
    ("id charset", "report", _set("id", "Ab0._:-z"), OK),
    ("id first char", "report", _set("id", ".a"), MALFORMED),
    ("id space", "report", _set("id", "a b"), MALFORMED),
    ("id newline", "report", _set("id", "ab\n"), MALFORMED),
    ("iat with offset", "report", _set("iat", "2026-03-01T12:30:00.5+07:00"), OK),
    ("iat without offset", "report", _set("iat", "2026-03-01T05:30:00"), MALFORMED),
    ("iat date only", "report", _set("iat", "2026-03-01"), MALFORMED),
    ("iat 41 chars", "report", _set("iat", "2026-03-01T05:30:00." + "0" * 20 + "Z"), MALFORMED),
    ("exp number", "report", _set("exp", 1772343300), MALFORMED),
    ("env 64", "report", _set("env", "e" * 64), OK),
    ("env 65", "report", _set("env", "e" * 65), MALFORMED),
    ("env empty", "report", _set("env", ""), MALFORMED),
    ("aud 64", "report", _set("aud", [f"grp:g{i}" for i in range(64)]), OK),
    ("aud 65", "report", _set("aud", [f"grp:g{i}" for i in range(65)]), MALFORMED),
    ("aud empty", "report", _set("aud", []), MALFORMED),
    ("aud string", "report", _set("aud", f"dev:{DEVICE}"), MALFORMED),
    ("aud id 64", "report", _set("aud", ["grp:" + "g" * 64]), OK),
    ("aud id 65", "report", _set("aud", ["grp:" + "g" * 65]), MALFORMED),
    ("aud prefix", "report", _set("aud", ["usr:x"]), MALFORMED),
    ("aud uppercase", "report", _set("aud", ["dev:X"]), MALFORMED),
    ("aud no id", "report", _set("aud", ["dev:"]), MALFORMED),
    ("aud not string", "report", _set("aud", [7]), MALFORMED),
    ("header unknown field", "report", _set("prio", 1), MALFORMED),
    ("type unknown", "report", _set("type", "dance"), BAD_BODY),
    ("type missing", "report", _set("type", ...), MALFORMED),
    # play
    ("play minimal", "play", lambda d: None, OK),
    ("play full", "play", _set("body", copy.deepcopy(FULL_PLAY)), OK),
    ("files 32", "play", _set("body.source.files", [_file(i) for i in range(32)]), OK),
    ("files 33", "play", _set("body.source.files", [_file(i) for i in range(33)]), BAD_BODY),
    ("files empty", "play", _set("body.source.files", []), BAD_BODY),
    ("url 2048", "play", _set("body.source.files.0.url", URL + "?" + "q" * (2047 - len(URL))), OK),
    (
        "url 2049",
        "play",
        _set("body.source.files.0.url", URL + "?" + "q" * (2048 - len(URL))),
        BAD_BODY,
    ),
    ("url empty", "play", _set("body.source.files.0.url", ""), BAD_BODY),
    ("url no host", "play", _set("body.source.files.0.url", "https:///a.mp3"), BAD_BODY),
    ("url relative", "play", _set("body.source.files.0.url", "/a.mp3"), BAD_BODY),
    ("url file", "play", _set("body.source.files.0.url", "file:///etc/passwd"), BAD_BODY),
    ("url tab", "play", _set("body.source.files.0.url", URL + "\t"), BAD_BODY),
    ("sha256 upper", "play", _set("body.source.files.0.sha256", SHA.upper()), BAD_BODY),
    ("sha256 63", "play", _set("body.source.files.0.sha256", SHA[:63]), BAD_BODY),
    ("sha256 65", "play", _set("body.source.files.0.sha256", SHA + "a"), BAD_BODY),
    ("size 1", "play", _set("body.source.files.0.size", 1), OK),
    ("size 2^40", "play", _set("body.source.files.0.size", 2**40), OK),
    ("size 0", "play", _set("body.source.files.0.size", 0), BAD_BODY),
    ("size 2^40+1", "play", _set("body.source.files.0.size", 2**40 + 1), BAD_BODY),
    ("size missing", "play", _set("body.source.files.0.size", ...), BAD_BODY),
    ("title 200", "play", _set("body.source.files.0.title", "t" * 200), OK),
    ("title 201", "play", _set("body.source.files.0.title", "t" * 201), BAD_BODY),
    ("title empty", "play", _set("body.source.files.0.title", ""), BAD_BODY),
    ("title control", "play", _set("body.source.files.0.title", "a\x1b[31mb"), BAD_BODY),
    ("title del", "play", _set("body.source.files.0.title", "a\x7f"), BAD_BODY),
    ("title unicode", "play", _set("body.source.files.0.title", "Bản tin sáng 🔔"), OK),
    ("title missing", "play", _set("body.source.files.0.title", ...), OK),
    ("file unknown field", "play", _set("body.source.files.0.mime", "audio/mpeg"), BAD_BODY),
    ("volume 0", "play", _set("body.volume", 0), OK),
    ("volume 100", "play", _set("body.volume", 100), OK),
    ("volume -1", "play", _set("body.volume", -1), BAD_BODY),
    ("volume 101", "play", _set("body.volume", 101), BAD_BODY),
    ("volume true", "play", _set("body.volume", True), BAD_BODY),
    ("repeat 1", "play", _set("body.repeat", 1), OK),
    ("repeat 20", "play", _set("body.repeat", 20), OK),
    ("repeat 0", "play", _set("body.repeat", 0), BAD_BODY),
    ("repeat 21", "play", _set("body.repeat", 21), BAD_BODY),
    ("duration 1", "play", _set("body.max_duration_s", 1), OK),
    ("duration 86400", "play", _set("body.max_duration_s", 86400), OK),
    ("duration 0", "play", _set("body.max_duration_s", 0), BAD_BODY),
    ("duration 86401", "play", _set("body.max_duration_s", 86401), BAD_BODY),
    ("duration missing", "play", _set("body.max_duration_s", ...), BAD_BODY),
    ("priority unknown", "play", _set("body.priority", "urgent"), BAD_BODY),
    ("priority missing", "play", _set("body.priority", ...), BAD_BODY),
    ("start_at", "play", _set("body.start_at", "2026-03-01T05:30:00Z"), OK),
    ("start_at no offset", "play", _set("body.start_at", "2026-03-01T05:30:00"), BAD_BODY),
    ("source both", "play", _set("body.source.stream", {"url": URL}), BAD_BODY),
    ("source neither", "play", _set("body.source", {}), BAD_BODY),
    ("source unknown", "play", _set("body.source.playlist", []), BAD_BODY),
    ("body unknown field", "play", _set("body.loud", True), BAD_BODY),
    ("body missing", "play", _set("body", ...), BAD_BODY),
    ("body list", "play", _set("body", []), BAD_BODY),
    ("stream", "stream", lambda d: None, OK),
    ("stream no url", "stream", _set("body.source.stream", {}), BAD_BODY),
    ("stream unknown field", "stream", _set("body.source.stream.codec", "mp3"), BAD_BODY),
    # stop, volume, relay, report
    ("target 200", "stop", _set("body.target", "t" * 200), OK),
    ("target 201", "stop", _set("body.target", "t" * 201), BAD_BODY),
    ("target empty", "stop", _set("body.target", ""), BAD_BODY),
    ("target missing", "stop", _set("body.target", ...), BAD_BODY),
    ("target control", "stop", _set("body.target", "a\nb"), BAD_BODY),
    ("stop unknown field", "stop", _set("body.now", True), BAD_BODY),
    ("level 0", "volume", _set("body.level", 0), OK),
    ("level 100", "volume", _set("body.level", 100), OK),
    ("level -1", "volume", _set("body.level", -1), BAD_BODY),
    ("level 101", "volume", _set("body.level", 101), BAD_BODY),
    ("level missing", "volume", _set("body.level", ...), BAD_BODY),
    ("relay auto", "relay", _set("body.state", "auto"), OK),
    ("relay on 1", "relay", _set("body", {"name": "amp", "state": "on", "duration_s": 1}), OK),
    ("relay on 86400", "relay", _set("body.duration_s", 86400), OK),
    ("relay on no duration", "relay", _set("body.state", "on"), BAD_BODY),
    ("relay duration 0", "relay", _set("body.duration_s", 0), BAD_BODY),
    ("relay duration 86401", "relay", _set("body.duration_s", 86401), BAD_BODY),
    ("relay other name", "relay", _set("body.name", "fan"), BAD_BODY),
    ("relay bad state", "relay", _set("body.state", "toggle"), BAD_BODY),
    ("report omitted body", "report", _set("body", ...), OK),
    ("report null body", "report", _set("body", None), OK),
    ("report non-empty body", "report", _set("body", {"now": True}), BAD_BODY),
]


@pytest.mark.parametrize(
    ("kind", "mutate", "expected"),
    [pytest.param(kind, mutate, expected, id=label) for label, kind, mutate, expected in BOUNDS],
)
def test_the_command_schema_and_the_receiver_agree_on_every_bound(
    kind: str, mutate: Mutation, expected: str | None
) -> None:
    doc = _command(kind)
    mutate(doc)
    assert code_verdict(doc) == expected
    errors = schema_errors("command.json", doc)
    if expected is None:
        assert errors == []
    else:
        assert errors, "the schema accepts what the receiver refuses"


# Forms a permissive parser would take and both the schema and the receiver refuse.
BOTH_REFUSE: list[tuple[str, str, Mutation]] = [
    ("url with a space", "play", _set("body.source.files.0.url", URL + "?a b")),
    ("url not ascii", "play", _set("body.source.files.0.url", "https://média.example.vn/a")),
    ("env not an id", "report", _set("env", "Prod X")),
    # ISO 8601 forms that are not RFC 3339 but that datetime.fromisoformat would take.
    ("time with a space", "report", _set("iat", "2026-03-01 05:30:00Z")),
    ("time basic format", "report", _set("iat", "20260301T053000Z")),
    ("time without seconds", "report", _set("iat", "2026-03-01T05:30Z")),
    ("time offset +0700", "report", _set("iat", "2026-03-01T12:30:00+0700")),
]
SCHEMA_LOOSER: list[tuple[str, str, Mutation]] = [
    # JSON Schema counts 1.0 as an integer; the receiver does not.
    ("seq 1.0", "report", _set("seq", 1.0)),
    # Relations between fields are beyond the schema.
    ("exp equal to iat", "report", _set("exp", IAT)),
    ("exp before iat", "report", _set("exp", "2026-03-01T05:00:00Z")),
]


@pytest.mark.parametrize(
    ("kind", "mutate"),
    [pytest.param(kind, mutate, id=label) for label, kind, mutate in BOTH_REFUSE],
)
def test_what_a_lenient_parser_would_take_both_refuse(kind: str, mutate: Mutation) -> None:
    doc = _command(kind)
    mutate(doc)
    assert code_verdict(doc) is not None
    assert not schema_accepts("command.json", doc)


@pytest.mark.parametrize(
    ("kind", "mutate"),
    [pytest.param(kind, mutate, id=label) for label, kind, mutate in SCHEMA_LOOSER],
)
def test_where_the_schema_is_knowingly_looser_than_the_parser(kind: str, mutate: Mutation) -> None:
    doc = _command(kind)
    mutate(doc)
    assert code_verdict(doc) == reasons.MALFORMED
    assert schema_accepts("command.json", doc)


def _envelope() -> dict[str, Any]:
    payload = command_payload("report", {}, env="lab", aud=[f"dev:{DEVICE}"])
    value: dict[str, Any] = json.loads(sign_command(payload, [SigningKey.generate("op-1")]))
    return value


def _sig_of(raw: bytes) -> Mutation:
    return _set("signatures.0.sig", base64.b64encode(raw).decode())


def envelope_verdict(envelope: Any) -> str | None:
    try:
        parse_envelope(json.dumps(envelope).encode())
    except Rejection as rejection:
        return rejection.reason
    return None


def _sign_times(n: int) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        doc["signatures"] = [dict(doc["signatures"][0], keyid=f"k{i}") for i in range(n)]

    return mutate


ENVELOPE_BOUNDS: list[tuple[str, Mutation, str | None]] = [
    ("as signed", lambda d: None, OK),
    ("8 signatures", _sign_times(8), OK),
    ("9 signatures", _sign_times(9), MALFORMED),
    ("no signatures", _set("signatures", []), reasons.UNSIGNED),
    ("signatures missing", _set("signatures", ...), reasons.UNSIGNED),
    ("signatures null", _set("signatures", None), reasons.UNSIGNED),
    ("signatures object", _set("signatures", {"keyid": "k", "sig": ""}), MALFORMED),
    ("keyid 64", _set("signatures.0.keyid", "k" * 64), OK),
    ("keyid 65", _set("signatures.0.keyid", "k" * 65), MALFORMED),
    ("keyid empty", _set("signatures.0.keyid", ""), MALFORMED),
    ("keyid missing", _set("signatures.0.keyid", ...), MALFORMED),
    ("signature extra field", _set("signatures.0.alg", "ed25519"), MALFORMED),
    ("sig 64 bytes with + and /", _sig_of(b"\xfb\xff" * 32), OK),
    ("sig 63 bytes", _sig_of(b"\x01" * 63), reasons.BAD_SIGNATURE),
    ("sig 65 bytes", _sig_of(b"\x01" * 65), reasons.BAD_SIGNATURE),
    ("sig url-safe alphabet", _set("signatures.0.sig", "-_" * 43 + "8="), MALFORMED),
    ("sig without padding", _set("signatures.0.sig", "A" * 86), MALFORMED),
    ("sig with a newline", _set("signatures.0.sig", "A" * 85 + "\nA=="), MALFORMED),
    ("sig not canonical", _set("signatures.0.sig", "A" * 85 + "B=="), MALFORMED),
    ("payload not canonical", _set("payload", "e31="), MALFORMED),
    ("payload without padding", _set("payload", "e30"), MALFORMED),
    ("payload not base64", _set("payload", "{}"), MALFORMED),
    ("payload number", _set("payload", 7), MALFORMED),
    ("payloadType unknown", _set("payloadType", "application/json"), reasons.BAD_TYPE),
    ("payloadType schedule", _set("payloadType", SCHEDULE_TYPE), OK),
    ("payloadType trust", _set("payloadType", TRUST_TYPE), OK),
    ("payloadType number", _set("payloadType", 1), MALFORMED),
    ("unknown envelope field", _set("keyid", "k"), MALFORMED),
]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [pytest.param(mutate, expected, id=label) for label, mutate, expected in ENVELOPE_BOUNDS],
)
def test_the_envelope_schema_and_the_receiver_agree_on_every_bound(
    mutate: Mutation, expected: str | None
) -> None:
    doc = _envelope()
    mutate(doc)
    assert envelope_verdict(doc) == expected
    assert schema_accepts("envelope.json", doc) == (expected is None)


# --- trust and schedule documents ------------------------------------------------------------


def _trust() -> dict[str, Any]:
    return {
        "id": "keyring-2026-03",
        "version": 1,
        "iat": IAT,
        "exp": "2027-03-01T00:00:00Z",
        "env": "lab",
        "keys": [
            {
                "id": f"root-{i}",
                "ed25519": SigningKey.generate(f"root-{i}").public_b64,
                "roles": ["root"],
                "scopes": ["*"],
            }
            for i in range(2)
        ]
        + [
            {
                "id": "op-2026",
                "ed25519": SigningKey.generate("op").public_b64,
                "roles": ["operator", "emergency"],
                "scopes": [GROUP, DEVICE],
                "not_after": "2026-12-31T23:59:59+07:00",
            }
        ],
        "thresholds": {"operator": 1, "emergency": 1, "root": 2},
    }


def _keys(n: int) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        doc["keys"] = [
            {
                "id": f"k{i}",
                "ed25519": SigningKey.generate("k").public_b64,
                "roles": ["operator"],
                "scopes": ["*"],
            }
            for i in range(n)
        ]

    return mutate


TRUST_BOUNDS: list[tuple[str, Mutation, str | None]] = [
    ("as written", lambda d: None, OK),
    ("64 keys", _keys(64), OK),
    ("65 keys", _keys(65), BAD_BODY),
    ("no keys", _set("keys", []), BAD_BODY),
    ("version 1", _set("version", 1), OK),
    ("version 2^63-1", _set("version", MAX_INT), OK),
    ("version 0", _set("version", 0), MALFORMED),
    ("thresholds left out", _set("thresholds", ...), OK),
    ("one threshold", _set("thresholds", {"root": 3}), OK),
    ("threshold 64", _set("thresholds", {"root": 64}), OK),
    ("threshold 0", _set("thresholds", {"root": 0}), BAD_BODY),
    ("threshold 65", _set("thresholds", {"root": 65}), BAD_BODY),
    ("threshold unknown role", _set("thresholds", {"admin": 1}), BAD_BODY),
    ("key id 64", _set("keys.0.id", "r" * 64), OK),
    ("key id 65", _set("keys.0.id", "r" * 65), BAD_BODY),
    ("key 31 bytes", _set("keys.0.ed25519", base64.b64encode(b"\x01" * 31).decode()), BAD_BODY),
    ("key 33 bytes", _set("keys.0.ed25519", base64.b64encode(b"\x01" * 33).decode()), BAD_BODY),
    ("key no roles", _set("keys.0.roles", []), BAD_BODY),
    ("key unknown role", _set("keys.0.roles", ["boss"]), BAD_BODY),
    ("key no scopes", _set("keys.0.scopes", []), BAD_BODY),
    ("key bad scope", _set("keys.0.scopes", ["Commune 7"]), BAD_BODY),
    ("key not_after no offset", _set("keys.2.not_after", "2026-12-31T23:59:59"), BAD_BODY),
    ("key unknown field", _set("keys.0.comment", "x"), BAD_BODY),
    ("unknown field", _set("note", "x"), MALFORMED),
    ("aud", _set("aud", [f"dev:{DEVICE}"]), MALFORMED),
    ("seq", _set("seq", 1), MALFORMED),
    ("env not an id", _set("env", "Lab"), MALFORMED),
    ("id missing", _set("id", ...), MALFORMED),
]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [pytest.param(mutate, expected, id=label) for label, mutate, expected in TRUST_BOUNDS],
)
def test_the_trust_schema_and_the_trust_parser_agree_on_every_bound(
    mutate: Mutation, expected: str | None
) -> None:
    doc = _trust()
    mutate(doc)
    assert schema_accepts("trust.json", doc) == (expected is None), schema_errors("trust.json", doc)
    try:
        parse_trust(doc)
    except Rejection as rejection:
        assert rejection.reason == expected
    else:
        assert expected is None


def _schedule(entries: int = 1) -> dict[str, Any]:
    return {
        "id": "sched-commune-25-07873",
        "version": 12,
        "seq": 1772343000000,
        "iat": IAT,
        "exp": "2026-06-01T00:00:00Z",
        "env": "prod",
        "aud": ["grp:commune-25-07873"],
        "tz": "Asia/Ho_Chi_Minh",
        "entries": [
            {
                "id": f"entry-{i}",
                "days": ["mon", "tue", "wed", "thu", "fri"],
                "at": "05:30",
                "priority": "normal",
                "volume": 70,
                "valid_from": "2026-03-02",
                "valid_until": "2026-05-31",
                "source": {"files": [_file(i)]},
                "max_duration_s": 1800,
            }
            for i in range(entries)
        ],
    }


def schedule_verdict(doc: Any) -> str | None:
    try:
        parse_schedule(doc)
    except Rejection as rejection:
        return rejection.reason
    return None


SCHEDULE_BOUNDS: list[tuple[str, Mutation, str | None]] = [
    ("as written", lambda d: None, OK),
    ("no programme", _set("entries", []), OK),
    ("200 entries", _set("entries", _schedule(200)["entries"]), OK),
    ("201 entries", _set("entries", _schedule(201)["entries"]), BAD_BODY),
    ("entries not a list", _set("entries", {}), BAD_BODY),
    ("stream source", _set("entries.0.source", {"stream": {"url": URL}}), OK),
    ("every day", _set("entries.0.days", ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]), OK),
    ("no day", _set("entries.0.days", []), BAD_BODY),
    ("a day in full", _set("entries.0.days", ["monday"]), BAD_BODY),
    ("at 00:00", _set("entries.0.at", "00:00"), OK),
    ("at 23:59", _set("entries.0.at", "23:59"), OK),
    ("at 24:00", _set("entries.0.at", "24:00"), BAD_BODY),
    ("at 5:30", _set("entries.0.at", "5:30"), BAD_BODY),
    ("at with seconds", _set("entries.0.at", "05:30:00"), BAD_BODY),
    ("date not padded", _set("entries.0.valid_from", "2026-3-2"), BAD_BODY),
    ("date with time", _set("entries.0.valid_until", "2026-05-31T00:00"), BAD_BODY),
    (
        "no dates",
        _both(_set("entries.0.valid_from", ...), _set("entries.0.valid_until", ...)),
        OK,
    ),
    ("emergency entry", _set("entries.0.priority", "emergency"), OK),
    ("entry volume 101", _set("entries.0.volume", 101), BAD_BODY),
    ("entry duration 86400", _set("entries.0.max_duration_s", 86400), OK),
    ("entry duration 86401", _set("entries.0.max_duration_s", 86401), BAD_BODY),
    ("entry without duration", _set("entries.0.max_duration_s", ...), BAD_BODY),
    ("entry without at", _set("entries.0.at", ...), BAD_BODY),
    ("entry with repeat", _set("entries.0.repeat", 2), BAD_BODY),
    ("entry with start_at", _set("entries.0.start_at", IAT), BAD_BODY),
    ("entry id 65", _set("entries.0.id", "e" * 65), BAD_BODY),
    ("entry bad file", _set("entries.0.source.files.0.sha256", "x"), BAD_BODY),
    ("unknown field", _set("note", "x"), MALFORMED),
    ("type field", _set("type", "play"), MALFORMED),
    ("version 0", _set("version", 0), MALFORMED),
    ("version 2^63-1", _set("version", MAX_INT), OK),
    ("no seq", _set("seq", ...), MALFORMED),
    ("no aud", _set("aud", ...), MALFORMED),
    ("no tz", _set("tz", ...), BAD_BODY),
    ("tz with a space", _set("tz", "Asia/Ho Chi Minh"), BAD_BODY),
    ("tz UTC", _set("tz", "UTC"), OK),
    ("tz Etc/GMT-7", _set("tz", "Etc/GMT-7"), OK),
]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [pytest.param(mutate, expected, id=label) for label, mutate, expected in SCHEDULE_BOUNDS],
)
def test_the_schedule_schema_and_the_schedule_parser_agree_on_every_bound(
    mutate: Mutation, expected: str | None
) -> None:
    doc = _schedule()
    mutate(doc)
    assert schedule_verdict(doc) == expected
    assert schema_accepts("schedule.json", doc) == (expected is None), schema_errors(
        "schedule.json", doc
    )


def _twice(doc: dict[str, Any]) -> None:
    doc["entries"] = [doc["entries"][0], dict(doc["entries"][0])]


def test_a_day_listed_twice_is_refused_by_both() -> None:
    doc = _schedule()
    _set("entries.0.days", ["mon", "mon"])(doc)
    assert schedule_verdict(doc) is not None
    assert not schema_accepts("schedule.json", doc)


SCHEDULE_DIFFERENCES: list[tuple[str, Mutation, bool]] = [
    # The schema is looser: relations within the document are beyond it.
    ("valid_until before valid_from", _set("entries.0.valid_until", "2026-03-01"), False),
    ("two entries with one id", _twice, False),
    ("a time zone the device does not know", _set("tz", "Asia/Atlantis"), False),
]


@pytest.mark.parametrize(
    ("mutate", "parser_accepts"),
    [pytest.param(m, accepts, id=label) for label, m, accepts in SCHEDULE_DIFFERENCES],
)
def test_where_the_schedule_schema_knowingly_differs_from_the_parser(
    mutate: Mutation, parser_accepts: bool
) -> None:
    doc = _schedule()
    mutate(doc)
    assert (schedule_verdict(doc) is None) == parser_accepts
    assert schema_accepts("schedule.json", doc) == (not parser_accepts)


def test_signed_documents_of_each_type_validate_as_envelopes() -> None:
    keys = [SigningKey.generate("root-1"), SigningKey.generate("root-2")]
    for payload_type, doc, schema in (
        (SCHEDULE_TYPE, _schedule(3), "schedule.json"),
        (TRUST_TYPE, _trust(), "trust.json"),
    ):
        envelope = sign(payload_type, json.dumps(doc, ensure_ascii=False).encode(), keys)
        assert schema_errors("envelope.json", json.loads(envelope)) == []
        parsed = parse_envelope(envelope)
        assert schema_errors(schema, loads_strict(parsed.body)) == []


# --- what the daemon publishes ---------------------------------------------------------------


def _json(message: Received) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(message.payload)
    return value


def _wait_event(
    watcher: Subscriber, site: Site, kind: str, ref: str | None = None
) -> dict[str, Any]:
    def matches(message: Received) -> bool:
        if message.topic != site.events_topic:
            return False
        event = _json(message)
        return bool(event["kind"] == kind and (ref is None or event.get("ref") == ref))

    return _json(watcher.wait_for(matches, 20))


def _wait_state(
    watcher: Subscriber, site: Site, predicate: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    def matches(message: Received) -> bool:
        return message.topic == site.state_topic and predicate(_json(message))

    return _json(watcher.wait_for(matches, 20))


def _play_payload(site: Site, message_id: str, name: str, **body: Any) -> dict[str, Any]:
    data = (site.media.directory / name).read_bytes()
    media = {
        "url": site.media.url(name),
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "title": name,
    }
    play_body = {"priority": "normal", "source": {"files": [media]}, "max_duration_s": 60}
    play_body |= body
    return command_payload(
        "play", play_body, env="lab", aud=[f"grp:{GROUP}"], message_id=message_id
    )


def _play(site: Site, message_id: str, name: str, **body: Any) -> bytes:
    return sign_command(_play_payload(site, message_id, name, **body), [site.operator])


def test_every_state_and_event_the_daemon_publishes_validates(
    site: Site, start_daemon: Callable[[], Daemon], watcher: Subscriber
) -> None:
    # This test switches the relay more often than the default limit of 6 a minute allows.
    with site.config.open("a", encoding="utf-8") as config:
        config.write("policy:\n  relay_max_toggles_per_min: 60\n")
    daemon = start_daemon()
    _wait_state(watcher, site, lambda s: s.get("online") is True)

    # A play that runs to its end, and an exact duplicate of it.
    first = _play(site, "schema-play", "tone440.wav", volume=90, repeat=1)
    watcher.publish(site.cmd_topic, first)
    _wait_event(watcher, site, "started", "schema-play")
    _wait_state(watcher, site, lambda s: s.get("state") == "playing")
    _wait_event(watcher, site, "finished", "schema-play")
    _wait_state(watcher, site, lambda s: s.get("relays") == {"amp": "off"})
    watcher.publish(site.cmd_topic, first)
    duplicate = _wait_event(watcher, site, "accepted", "schema-play")
    assert duplicate["detail"] == "duplicate of the last accepted"

    # Rejections: junk, a forgery, a replay, a retained command, another environment.
    watcher.publish(site.cmd_topic, b"\xff not json")
    assert _wait_event(watcher, site, "rejected")["reason"] == "malformed"
    stranger = SigningKey(site.operator.id, SigningKey.generate("x").private)
    report = command_payload("report", {}, env="lab", aud=[f"dev:{DEVICE}"], message_id="r-1")
    watcher.publish(site.cmd_topic, sign_command(report, [stranger]))
    assert _wait_event(watcher, site, "rejected")["reason"] == "bad_signature"
    old = command_payload("report", {}, env="lab", aud=[f"dev:{DEVICE}"], message_id="old", seq=1)
    watcher.publish(site.cmd_topic, sign_command(old, [site.operator]))
    assert _wait_event(watcher, site, "rejected", "old")["reason"] == "replayed"
    watcher.publish(site.cmd_topic, sign_command(report, [site.operator]), retain=True)
    assert _wait_event(watcher, site, "rejected")["reason"] == "policy"
    other = command_payload("report", {}, env="prod", aud=[f"dev:{DEVICE}"], message_id="prod")
    watcher.publish(site.cmd_topic, sign_command(other, [site.operator]))
    assert _wait_event(watcher, site, "rejected", "prod")["reason"] == "wrong_env"

    # Volume and report publish the state.
    volume = command_payload("volume", {"level": 35}, env="lab", aud=[f"dev:{DEVICE}"])
    watcher.publish(site.cmd_topic, sign_command(volume, [site.operator]))
    _wait_state(watcher, site, lambda s: s.get("volume") == 35)
    report = command_payload("report", {}, env="lab", aud=[f"grp:{GROUP}"], message_id="r-2")
    watcher.publish(site.cmd_topic, sign_command(report, [site.operator]))
    _wait_event(watcher, site, "accepted", "r-2")

    # Preempted by a higher level, resumed afterwards, then stopped by an emergency key.
    write_tone(site.media.directory / "long.wav", 600.0, 20.0)
    watcher.publish(site.cmd_topic, _play(site, "long", "long.wav"))
    _wait_event(watcher, site, "started", "long")
    time.sleep(0.5)  # so that it resumes from a later point, which is reported
    watcher.publish(site.cmd_topic, _play(site, "urgent", "tone440.wav", priority="priority"))
    assert _wait_event(watcher, site, "preempted", "long")["detail"] == "by urgent"
    _wait_event(watcher, site, "finished", "urgent")
    assert "resumed" in _wait_event(watcher, site, "started", "long")["detail"]
    stop = command_payload("stop", {"target": "all"}, env="lab", aud=[f"dev:{DEVICE}"])
    watcher.publish(site.cmd_topic, sign_command(stop, [site.emergency]))
    _wait_event(watcher, site, "stopped", "long")
    _wait_state(watcher, site, lambda s: s.get("relays") == {"amp": "off"})

    # Failures: a file that is not there, and a file that is not audio.
    (site.media.directory / "notes.mp3").write_bytes(b"this is not an announcement\n" * 50)
    gone = _play_payload(site, "gone", "tone440.wav")
    gone["body"]["source"]["files"][0] |= {
        "url": site.media.url("missing.wav"),
        "sha256": hashlib.sha256(b"never served").hexdigest(),
        "size": 12,
    }
    watcher.publish(site.cmd_topic, sign_command(gone, [site.operator]))
    assert _wait_event(watcher, site, "failed", "gone")["reason"] == "download_failed"
    watcher.publish(site.cmd_topic, _play(site, "noise", "notes.mp3"))
    assert _wait_event(watcher, site, "failed", "noise")["reason"] == "playback_failed"
    _wait_state(watcher, site, lambda s: s.get("relays") == {"amp": "off"})

    # A manual relay override shows in the state.
    relay = {"name": "amp", "state": "on", "duration_s": 60}
    override = command_payload("relay", relay, env="lab", aud=[f"dev:{DEVICE}"])
    watcher.publish(site.cmd_topic, sign_command(override, [site.operator]))
    _wait_state(watcher, site, lambda s: s.get("relay_override") == "on")

    # A clean stop publishes the offline state.
    assert daemon.stop() == 0
    _wait_state(watcher, site, lambda s: s.get("online") is False)

    events = [_json(m) for m in watcher.seen if m.topic == site.events_topic]
    states = [_json(m) for m in watcher.seen if m.topic == site.state_topic]
    envelopes = [json.loads(m.raw) for m in watcher.seen]
    assert [e for e in envelopes if schema_errors("report.json", e)] == []
    problems = [
        f"{kind} {message}: {error}"
        for kind, schema, messages in (
            ("event", "event.json", events),
            ("state", "state.json", states),
        )
        for message in messages
        for error in schema_errors(schema, message)
    ]
    assert problems == []
    assert {e["kind"] for e in events} == {
        "accepted",
        "rejected",
        "started",
        "finished",
        "stopped",
        "preempted",
        "failed",
    }
    numbers = [e["n"] for e in events]
    assert numbers == sorted(set(numbers)), "event numbers went back or repeated"
    assert {s.get("state") for s in states} == {"idle", "playing", None}  # None: offline
    assert all(not m.retain for m in watcher.seen if m.topic == site.events_topic)
