"""receiver-admin's trust and schedule commands: what they sign, and that they publish retained."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from receiver.central.admin import main
from receiver.central.signing import SigningKey
from receiver.core.envelope import parse_envelope
from tests.lab.broker import MosquittoBroker, Subscriber


def keys(tmp_path: Path, *names: str) -> list[Path]:
    paths = []
    for name in names:
        path = tmp_path / f"{name}.pem"
        SigningKey.generate(name).save(path)
        paths.append(path)
    return paths


def test_a_trust_document_from_a_keyring_file_signed_by_two_roots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root_a, root_b, operator = keys(tmp_path, "root-a", "root-b", "op-2027")
    entries = []
    for path, roles in ((root_a, "root"), (root_b, "root"), (operator, "operator")):
        assert main(["key-entry", "--key", str(path), "--roles", roles]) == 0
        entries.append(json.loads(capsys.readouterr().out))
    keyring = tmp_path / "keyring.json"
    keyring.write_text(json.dumps(entries))
    assert (
        main(
            [
                "trust",
                "--version",
                "2",
                "--keys",
                str(keyring),
                "--env",
                "prod",
                "--key",
                str(root_a),
                "--key",
                str(root_b),
                "--thresholds",
                "root=2,operator=1",
            ]
        )
        == 0
    )
    envelope = parse_envelope(capsys.readouterr().out.strip().encode())
    assert [keyid for keyid, _ in envelope.signatures] == ["root-a", "root-b"]
    payload = json.loads(envelope.body)
    assert payload["version"] == 2 and payload["env"] == "prod"
    assert [k["id"] for k in payload["keys"]] == ["root-a", "root-b", "op-2027"]
    assert payload["thresholds"] == {"operator": 1, "root": 2}  # emergency keeps its default
    assert len(base64.b64decode(payload["keys"][2]["ed25519"])) == 32


def test_a_schedule_is_published_retained_on_each_group_topic(
    tmp_path: Path, broker: MosquittoBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    (operator,) = keys(tmp_path, "op-1")
    schedule = tmp_path / "morning.json"
    schedule.write_text(
        json.dumps({"id": "morning", "version": 3, "tz": "Asia/Ho_Chi_Minh", "entries": []})
    )
    assert (
        main(
            [
                "schedule",
                "--file",
                str(schedule),
                "--env",
                "prod",
                "--aud",
                "grp:c-1",
                "--aud",
                "grp:c-2",
                "--key",
                str(operator),
                "--host",
                broker.host,
                "--port",
                str(broker.port),
            ]
        )
        == 0
    )
    assert "version 3" in capsys.readouterr().out
    topics = ["loa/v1/grp/c-1/schedule", "loa/v1/grp/c-2/schedule"]
    with Subscriber(broker, topics) as late_subscriber:  # retained: still there for it
        for _ in topics:
            message = late_subscriber.wait_for(lambda m: m.retain)
            body = json.loads(parse_envelope(message.payload).body)
            assert (body["id"], body["version"], body["aud"]) == (
                "morning",
                3,
                ["grp:c-1", "grp:c-2"],
            )


def root_entries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], scopes: dict[str, str]
) -> tuple[list[Path], Path]:
    """Root keys scoped as given, and an operator, in a keyring file."""
    paths = keys(tmp_path, *scopes, "op-2027")
    entries = []
    for path, scope in zip(paths, [*scopes.values(), "prov-25"], strict=True):
        roles = "operator" if path.stem == "op-2027" else "root"
        assert main(["key-entry", "--key", str(path), "--roles", roles, "--scopes", scope]) == 0
        entries.append(json.loads(capsys.readouterr().out))
    keyring = tmp_path / "keyring.json"
    keyring.write_text(json.dumps(entries))
    return paths[:-1], keyring


def trust(keyring: Path, roots: list[Path]) -> int:
    signing = [word for root in roots for word in ("--key", str(root))]
    version = ["--version", "2", "--thresholds", "root=2,operator=1"]
    return main(["trust", *version, "--keys", str(keyring), "--env", "prod", *signing])


def test_a_keyring_whose_root_keys_hold_one_province_is_signed_for_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A province's own roots (scoped to it, as security.md's rotation example scopes its
    # operator keys): its receivers take the keyring, so the tool must sign it.
    roots, keyring = root_entries(tmp_path, capsys, {"root-1": "prov-25", "root-2": "prov-25"})
    assert trust(keyring, roots) == 0, capsys.readouterr().err
    envelope = parse_envelope(capsys.readouterr().out.strip().encode())
    assert sorted(keyid for keyid, _ in envelope.signatures) == ["root-1", "root-2"]


def test_root_keys_of_two_provinces_cannot_make_one_threshold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # No receiver is in both provinces: each takes one signature of the two its keyring needs.
    roots, keyring = root_entries(tmp_path, capsys, {"root-1": "prov-25", "root-2": "prov-26"})
    assert trust(keyring, roots) == 2
    err = capsys.readouterr().err
    assert "not signed by enough of its own root keys" in err, err
    assert "prov-25" in err and "prov-26" in err, err
