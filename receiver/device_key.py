"""The device's own Ed25519 key, and the DSSE envelopes it seals its reports in.

Each receiver signs the events and states it publishes (protocol §14), so that a report that
crossed a bridge, or was published by someone else who can write the device's topics, can be
told from a real one. The private key is made on the device, the first time the daemon starts
(or ``receiver enroll`` runs), in the state directory as ``device.key`` (PKCS#8 PEM, mode
0600), and never leaves it. ``receiver enroll`` prints the public half as the one-line JSON
entry central adds to its registry of devices.

Made atomically: written to a temporary file (0600 from its creation), flushed to the card,
then linked into place (never over a key another process made meanwhile) and the directory
synced, so a power cut leaves either no key or a
whole one. A key file that cannot be read is never replaced silently: a new key would orphan
the enrolled one, so the daemon stops and says so.

The PEM is written and read here for the one form this module makes (RFC 8410's PKCS#8 for an
Ed25519 key: a fixed 16-byte header and the 32-byte seed, what ``openssl genpkey -algorithm
ed25519`` writes too), so that the running daemon does not load cryptography's serialisation
package, whose RSA, DSA, EC, DH and SSH modules would stay resident (about 1 MiB) for one read
at start-up; any other PEM is handed to that package, loaded then, which reads or refuses it.
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import secrets
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from receiver.core.envelope import pae
from receiver.core.record import record
from receiver.i18n import gettext_ as _
from receiver.i18n import os_reason

__all__ = [
    "DEVICE_KEY_FILE",
    "EVENT_TYPE",
    "STATE_TYPE",
    "DeviceKey",
    "DeviceKeyError",
    "enrollment_entry",
    "load_or_create_device_key",
    "private_key_pem",
    "refuse_unusable_device_key",
    "seal_report",
]

DEVICE_KEY_FILE: Final = "device.key"
#: DSSE payload types of the device's reports; the receiver never accepts them as input.
EVENT_TYPE: Final = "application/vnd.loa.event.v1+json"
STATE_TYPE: Final = "application/vnd.loa.state.v1+json"
#: PKCS#8 PrivateKeyInfo of an Ed25519 key (RFC 8410 section 7), up to the 32-byte seed.
_PKCS8_ED25519: Final = bytes.fromhex("302e020100300506032b657004220420")
_PEM_BEGIN: Final = b"-----BEGIN PRIVATE KEY-----"
_PEM_END: Final = b"-----END PRIVATE KEY-----"


@record
class DeviceKey:
    """The device's private key; its key id is the device id."""

    id: str
    private: Ed25519PrivateKey

    @property
    def public_b64(self) -> str:
        return base64.b64encode(self.private.public_key().public_bytes_raw()).decode("ascii")


class DeviceKeyError(RuntimeError):
    """The device key exists but cannot be used (unreadable, not Ed25519, wrong mode)."""


def load_or_create_device_key(state_dir: Path, device_id: str) -> tuple[DeviceKey, bool]:
    """The device's key (its id is the device id) and whether it was made just now."""
    path = state_dir / DEVICE_KEY_FILE
    if path.exists():
        return _load(path, device_id), False
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    _refuse_if_not_the_owner(state_dir, path)
    private = Ed25519PrivateKey.generate()
    pem = private_key_pem(private)
    temporary = path.with_name(f".{DEVICE_KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o600)  # the umask cannot widen it, but a stale ACL might
        # A link, not a rename: it fails if another process (``receiver enroll`` while the
        # daemon starts) put its key there meanwhile, and that key, not this one, is the
        # device's from now on.
        os.link(temporary, path)
        _sync_directory(state_dir)
    except FileExistsError:
        return _load(path, device_id), False
    except OSError as exc:
        raise DeviceKeyError(
            _("cannot write the device key {path}: {reason}").format(
                path=path, reason=os_reason(exc)
            )
        ) from exc
    finally:
        temporary.unlink(missing_ok=True)
    return DeviceKey(device_id, private), True


def refuse_unusable_device_key(state_dir: Path) -> None:
    """Raise :class:`DeviceKeyError` where :func:`load_or_create_device_key` would (a key that
    cannot be used, or none and a state directory another user owns), making nothing: the
    daemon asks before it puts anything in the state directory, so that a refused start leaves
    the directory as it was (a hand-run as root would leave files the daemon's user cannot
    open)."""
    path = state_dir / DEVICE_KEY_FILE
    if path.exists():
        _load(path, "")
    elif state_dir.is_dir():
        _refuse_if_not_the_owner(state_dir, path)


def _refuse_if_not_the_owner(state_dir: Path, path: Path) -> None:
    """A key made by another user than the daemon's (``sudo receiver enroll`` as root) would be
    unreadable by the daemon, which then refuses to start: make it as the directory's owner."""
    owner = state_dir.stat().st_uid
    if owner == os.geteuid():
        return
    try:
        name = pwd.getpwuid(owner).pw_name
    except KeyError:
        name = str(owner)
    raise DeviceKeyError(
        _(
            "{state_dir} belongs to {name}, who runs the daemon: make the device key {path} as "
            "that user, e.g. sudo -u {name} receiver enroll --config ..."
        ).format(state_dir=state_dir, name=name, path=path)
    )


def _load(path: Path, device_id: str) -> DeviceKey:
    try:
        mode = path.stat().st_mode & 0o777
        data = path.read_bytes()
    except OSError as exc:
        raise DeviceKeyError(
            _("cannot read the device key {path}: {reason}").format(
                path=path, reason=os_reason(exc)
            )
        ) from exc
    if mode & 0o077:
        raise DeviceKeyError(
            _(
                "the device key {path} is readable by others (mode {mode}): anyone who read it "
                "can sign reports as this device. Make a new one (delete the file, restart, "
                "enroll again) or, if nobody else can have read it, chmod 600 it"
            ).format(path=path, mode=f"{mode:04o}")
        )
    private = _ed25519_from_pem(data)
    if private is None:
        from cryptography.hazmat.primitives import serialization  # any other form: rare

        try:
            other = serialization.load_pem_private_key(data, password=None)
        except ValueError as exc:
            raise DeviceKeyError(
                _("the device key {path} is not a PEM private key").format(path=path)
            ) from exc
        except TypeError as exc:  # cryptography: "Password was not given but ... encrypted"
            raise DeviceKeyError(
                _(
                    "the device key {path} is protected by a passphrase: the daemon signs with it "
                    "unattended and needs it unencrypted (openssl pkey -in KEY -out KEY-plain), "
                    "or delete it, restart and enroll the new one"
                ).format(path=path)
            ) from exc
        if not isinstance(other, Ed25519PrivateKey):
            raise DeviceKeyError(_("the device key {path} is not an Ed25519 key").format(path=path))
        private = other
    return DeviceKey(device_id, private)


def private_key_pem(private: Ed25519PrivateKey) -> bytes:
    """``private`` as unencrypted PKCS#8 PEM (byte for byte what cryptography writes)."""
    body = base64.b64encode(_PKCS8_ED25519 + private.private_bytes_raw())
    return _PEM_BEGIN + b"\n" + body + b"\n" + _PEM_END + b"\n"


def _ed25519_from_pem(data: bytes) -> Ed25519PrivateKey | None:
    """The key, if ``data`` is exactly :func:`private_key_pem`'s form; else None."""
    lines = data.strip().split(b"\n")
    if len(lines) != 3 or lines[0].strip() != _PEM_BEGIN or lines[2].strip() != _PEM_END:
        return None
    try:
        der = base64.b64decode(lines[1].strip(), validate=True)
    except ValueError:  # binascii.Error
        return None
    if len(der) != len(_PKCS8_ED25519) + 32 or not der.startswith(_PKCS8_ED25519):
        return None
    return Ed25519PrivateKey.from_private_bytes(der[len(_PKCS8_ED25519) :])


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def enrollment_entry(key: DeviceKey) -> dict[str, Any]:
    """The registry entry central adds for this device: its id and its public key."""
    return {"device": key.id, "ed25519": key.public_b64}


def enrollment_line(key: DeviceKey) -> str:
    """:func:`enrollment_entry` as the one JSON line ``receiver enroll`` prints."""
    return json.dumps(enrollment_entry(key), separators=(", ", ": "))


def seal_report(key: DeviceKey, payload_type: str, body: bytes) -> bytes:
    """The report ``body`` (compact JSON) in a DSSE envelope signed by the device key."""
    signature = key.private.sign(pae(payload_type, body))
    envelope = {
        "payloadType": payload_type,
        "payload": base64.b64encode(body).decode("ascii"),
        "signatures": [{"keyid": key.id, "sig": base64.b64encode(signature).decode("ascii")}],
    }
    return json.dumps(envelope, separators=(",", ":")).encode("utf-8")
