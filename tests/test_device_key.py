"""The device key: made once, 0600, reused, never silently replaced; ``receiver enroll``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from receiver.central.reports import Registry, ReportVerifier
from receiver.cli import main
from receiver.device_key import (
    DEVICE_KEY_FILE,
    EVENT_TYPE,
    DeviceKeyError,
    enrollment_entry,
    load_or_create_device_key,
    private_key_pem,
    seal_report,
)


def _pkcs8(key: Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_key(state: Path, pem: bytes) -> Path:
    state.mkdir(mode=0o700, exist_ok=True)
    path = state / DEVICE_KEY_FILE
    path.write_bytes(pem)
    os.chmod(path, 0o600)
    return path


def test_the_key_is_made_once_readable_by_the_daemon_only_and_reused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    key, made = load_or_create_device_key(state, "dev-1")
    assert made
    assert (state / DEVICE_KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert [p.name for p in state.iterdir()] == [DEVICE_KEY_FILE]  # no temporary file left
    again, made_again = load_or_create_device_key(state, "dev-1")
    assert not made_again
    assert enrollment_entry(again) == enrollment_entry(key)


def test_a_key_others_can_read_is_refused_not_replaced(tmp_path: Path) -> None:
    load_or_create_device_key(tmp_path, "dev-1")
    path = tmp_path / DEVICE_KEY_FILE
    before = path.read_bytes()
    os.chmod(path, 0o644)
    with pytest.raises(DeviceKeyError, match="readable by others"):
        load_or_create_device_key(tmp_path, "dev-1")
    assert path.read_bytes() == before


def test_a_damaged_key_is_refused_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / DEVICE_KEY_FILE
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\ngarbage\n")
    os.chmod(path, 0o600)
    with pytest.raises(DeviceKeyError, match="not a PEM private key"):
        load_or_create_device_key(tmp_path, "dev-1")
    assert path.read_bytes().endswith(b"garbage\n")


def test_enroll_prints_the_registry_line_that_verifies_the_devices_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "receiver.yaml"
    config.write_text(
        "device_id: dev-1\nenv: lab\ngroups: []\nbroker: {host: localhost}\n"
        "trust:\n  keys:\n    - {id: k1, ed25519: 'D2a95YId0a+MgHdAYzSwhqRFK88Ffq4QRPqR4OEb020=',"
        " roles: [operator], scopes: ['*']}\n"
        f"storage: {{state_dir: {tmp_path / 'state'}, cache_dir: {tmp_path / 'cache'}}}\n",
        encoding="utf-8",
    )
    assert main(["enroll", "--config", str(config)]) == 0
    line = capsys.readouterr().out.strip()
    assert json.loads(line)["device"] == "dev-1"
    assert main(["enroll", "--config", str(config)]) == 0
    assert capsys.readouterr().out.strip() == line  # the same key: enrolling again is harmless

    key, _ = load_or_create_device_key(tmp_path / "state", "dev-1")
    event = json.dumps({"device": "dev-1", "n": 1, "ts": "2026-01-01T00:00:00.000Z"}).encode()
    verdict = ReportVerifier(Registry.parse([line])).check(
        "loa/v1/dev/dev-1/events", seal_report(key, EVENT_TYPE, event)
    )
    assert verdict.verdict == "signed"


def test_enroll_with_a_bad_config_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "receiver.yaml"
    config.write_text("device_id: dev-1\n", encoding="utf-8")
    assert main(["enroll", "--config", str(config)]) == 78
    assert "configuration has errors" in capsys.readouterr().err


def test_a_registry_line_that_is_not_an_enroll_line_is_named(tmp_path: Path) -> None:
    from receiver.central.reports import RegistryError

    with pytest.raises(RegistryError, match=r"registry:2: not a 'receiver enroll' line"):
        Registry.parse(
            [
                '{"device": "a", "ed25519": "D2a95YId0a+MgHdAYzSwhqRFK88Ffq4QRPqR4OEb020="}',
                "nonsense",
            ]
        )


def test_two_starts_at_once_end_with_the_one_key_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``receiver enroll`` run while the daemon makes its first key: the one that writes second
    must not replace the first one's key (it would sign with a key nobody enrolled)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from receiver.device_key import DeviceKey

    real_generate = Ed25519PrivateKey.generate
    other: list[DeviceKey] = []

    def generate_while_the_other_writes() -> Ed25519PrivateKey:
        monkeypatch.setattr(Ed25519PrivateKey, "generate", real_generate)
        other.append(load_or_create_device_key(tmp_path, "dev-1")[0])  # the other process
        return real_generate()

    monkeypatch.setattr(Ed25519PrivateKey, "generate", generate_while_the_other_writes)
    key, made = load_or_create_device_key(tmp_path, "dev-1")

    on_disk, _ = load_or_create_device_key(tmp_path, "dev-1")
    assert enrollment_entry(key) == enrollment_entry(on_disk) == enrollment_entry(other[0])
    assert not made
    assert [p.name for p in tmp_path.iterdir()] == [DEVICE_KEY_FILE]


def test_a_key_is_not_made_for_a_state_directory_another_user_owns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sudo receiver enroll`` (root) in the daemon's state directory made a key only root can
    read: the daemon, running as its own user, then refused to start."""
    state = tmp_path / "state"
    state.mkdir()
    owner = state.stat().st_uid
    monkeypatch.setattr(os, "geteuid", lambda: owner + 1)  # someone else runs enroll
    with pytest.raises(DeviceKeyError, match="sudo -u"):
        load_or_create_device_key(state, "dev-1")
    assert list(state.iterdir()) == []


def test_the_key_file_is_the_pkcs8_pem_cryptography_writes_and_reads(tmp_path: Path) -> None:
    """The daemon writes and reads its key without cryptography's serialisation package (see
    receiver.device_key): the file stays the standard form, both ways."""
    key, _ = load_or_create_device_key(tmp_path / "made", "dev-1")
    written = (tmp_path / "made" / DEVICE_KEY_FILE).read_bytes()
    assert written == _pkcs8(key.private) == private_key_pem(key.private)
    read_back = serialization.load_pem_private_key(written, password=None)
    assert isinstance(read_back, Ed25519PrivateKey)
    assert read_back.private_bytes_raw() == key.private.private_bytes_raw()

    theirs = Ed25519PrivateKey.generate()  # e.g. made by openssl genpkey -algorithm ed25519
    _write_key(tmp_path / "theirs", _pkcs8(theirs).replace(b"\n", b"\r\n"))
    loaded, made = load_or_create_device_key(tmp_path / "theirs", "dev-2")
    assert not made
    assert loaded.private.private_bytes_raw() == theirs.private_bytes_raw()
    assert loaded.public_b64 == enrollment_entry(loaded)["ed25519"]


def test_a_pem_key_of_another_kind_is_refused_not_replaced(tmp_path: Path) -> None:
    """Anything but the plain Ed25519 form goes to cryptography's reader, which names it."""
    pem = _pkcs8(ec.generate_private_key(ec.SECP256R1()))
    path = _write_key(tmp_path, pem)
    with pytest.raises(DeviceKeyError, match="not an Ed25519 key"):
        load_or_create_device_key(tmp_path, "dev-1")
    assert path.read_bytes() == pem


def test_a_key_locked_by_a_passphrase_is_refused_in_plain_words(tmp_path: Path) -> None:
    """A device key replaced by hand with an encrypted one ended the daemon with a TypeError."""
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    path = _write_key(tmp_path, pem)
    with pytest.raises(DeviceKeyError, match="protected by a passphrase"):
        load_or_create_device_key(tmp_path, "dev-1")
    assert path.read_bytes() == pem


def test_the_daemon_with_an_unusable_device_key_exits_78_not_1(tmp_path: Path) -> None:
    """No restart mends a device key: the unit's RestartPreventExitStatus=78 must see 78."""
    from tests.test_start_refusals import receiver, write_config

    config = write_config(tmp_path)
    path = _write_key(tmp_path / "state", b"-----BEGIN PRIVATE KEY-----\ngarbage\n")
    result = receiver("run", "--config", str(config))
    assert result.returncode == 78, result.stdout + result.stderr
    assert "not a PEM private key" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert path.read_bytes().endswith(b"garbage\n")
