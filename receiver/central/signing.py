"""The central side of the wire format: building and signing messages for receivers.

Used by ``receiver-admin`` and by the tests; the receiver itself only verifies. Payload bytes
are produced once and signed as they are: the receiver never needs a canonical JSON form.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from receiver.config import key_id_problem
from receiver.core.envelope import COMMAND_TYPE, SCHEDULE_TYPE, TRUST_TYPE, pae
from receiver.core.record import record
from receiver.timefmt import rfc3339


@record
class SigningKey:
    """A private key and the key id receivers know it by."""

    id: str
    private: Ed25519PrivateKey

    @classmethod
    def generate(cls, key_id: str) -> SigningKey:
        return cls(key_id, Ed25519PrivateKey.generate())

    @property
    def public_b64(self) -> str:
        raw = self.private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return base64.b64encode(raw).decode("ascii")

    def save(self, path: Path) -> None:
        """Write the key as PKCS#8 PEM, readable by its owner only; the key id goes alongside.

        Both are written whole or not at all (a full disk leaves no empty key file that would
        then block the next try, nor a key without its id file, which would sign under the
        file's name); an existing key file is never replaced (FileExistsError).
        """
        pem = self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        if path.exists():
            raise FileExistsError(path)
        id_file = path.with_suffix(path.suffix + ".id")
        written: list[Path] = []
        try:
            _write_whole(id_file.with_name(f".{id_file.name}.tmp"), (self.id + "\n").encode())
            written.append(id_file.with_name(f".{id_file.name}.tmp"))
            _write_whole(path.with_name(f".{path.name}.tmp"), pem)
            written.append(path.with_name(f".{path.name}.tmp"))
            os.link(written[1], path)  # fails, rather than replace, if a key appeared meanwhile
            os.replace(written[0], id_file)
        finally:
            for temporary in written:
                temporary.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: Path, key_id: str | None = None) -> SigningKey:
        """The key in ``path`` (PEM, no passphrase), known by ``key_id``, else by the id in
        ``<path>.id``, else (no such file) by the file's name without ``.pem``.

        ValueError says what is wrong with the file, or with the id it yields: one the
        receivers' config or the envelope would refuse is never signed under.
        """
        try:
            private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except TypeError as exc:  # cryptography's word for "encrypted, and no password given"
            plain = path.with_name(f"{path.stem}-plain.pem")
            id_file = path.with_suffix(path.suffix + ".id")
            copy = f", then copy {id_file.name} to {plain.name}.id" if id_file.exists() else ""
            raise ValueError(
                f"{path}: encrypted with a passphrase; receiver-admin needs the key unencrypted "
                f"(readable by you alone): openssl pkey -in {path} -out {plain} writes one "
                f"(it asks the passphrase once){copy}"
            ) from exc
        except ValueError as exc:
            raise ValueError(f"{path}: not a PEM private key without a passphrase") from exc
        if not isinstance(private, Ed25519PrivateKey):
            raise ValueError(f"{path}: not an Ed25519 private key")
        if key_id is None:
            key_id = _key_id_beside(path)
        return cls(key_id, private)


def _key_id_beside(path: Path) -> str:
    """The key id in ``<path>.id`` (as ``keygen`` writes it), or the file's name without its
    suffix when there is no such file; ValueError if the receivers would refuse that id."""
    id_file = path.with_suffix(path.suffix + ".id")
    try:
        key_id = id_file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        key_id = path.stem
        problem = key_id_problem(key_id)
        if problem is not None:
            raise ValueError(
                f"{path}: with no {id_file.name} beside it, the key id is the file's name "
                f"{key_id!r}, which {problem}; write the key's id (as keygen --id takes it) "
                f"in {id_file}"
            ) from None
        return key_id
    except (OSError, UnicodeDecodeError) as exc:
        reason = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else exc.strerror
        raise ValueError(f"{path}: cannot read its key id file {id_file} ({reason})") from exc
    problem = key_id_problem(key_id)
    if problem is not None:
        said = "is empty" if not key_id else f"holds {key_id!r}, which {problem}"
        raise ValueError(
            f"{path}: its key id file {id_file} {said}; write the id the receivers know the "
            "key by in it (as keygen --id takes it)"
        )
    return key_id


def _write_whole(path: Path, data: bytes) -> None:
    """``data`` in a new file at ``path`` (mode 0600), on the disk before it returns."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def sign(payload_type: str, body: bytes, keys: Sequence[SigningKey]) -> bytes:
    """A DSSE envelope over ``body`` signed by every key given."""
    message = pae(payload_type, body)
    envelope = {
        "payloadType": payload_type,
        "payload": base64.b64encode(body).decode("ascii"),
        "signatures": [
            {"keyid": key.id, "sig": base64.b64encode(key.private.sign(message)).decode("ascii")}
            for key in keys
        ],
    }
    return json.dumps(envelope, separators=(",", ":")).encode("utf-8")


def command_payload(
    kind: str,
    body: dict[str, Any],
    *,
    env: str,
    aud: Sequence[str],
    message_id: str | None = None,
    seq: int | None = None,
    iat: float | None = None,
    ttl_s: float = 300.0,
) -> dict[str, Any]:
    """A command payload; ``seq`` defaults to the signer's UTC millisecond clock."""
    issued = time.time() if iat is None else iat
    sequence = int(issued * 1000) if seq is None else seq
    return {
        "id": message_id or f"cmd-{sequence}",
        "seq": sequence,
        "iat": rfc3339(issued),
        "exp": rfc3339(issued + ttl_s),
        "env": env,
        "aud": list(aud),
        "type": kind,
        "body": body,
    }


def sign_command(payload: dict[str, Any], keys: Sequence[SigningKey]) -> bytes:
    return sign(COMMAND_TYPE, json.dumps(payload).encode("utf-8"), keys)


def key_entry(
    key: SigningKey, roles: Sequence[str], scopes: Sequence[str] = ("*",)
) -> dict[str, Any]:
    """A keyring entry for a trust document (or, as YAML, for the receiver's config)."""
    return {"id": key.id, "ed25519": key.public_b64, "roles": list(roles), "scopes": list(scopes)}


def trust_payload(
    version: int,
    keys: Sequence[dict[str, Any]],
    *,
    env: str,
    thresholds: dict[str, int] | None = None,
    doc_id: str | None = None,
    iat: float | None = None,
    ttl_s: float = 30 * 86400.0,
) -> dict[str, Any]:
    """A trust document replacing the whole keyring; receivers need ``version`` to go up."""
    issued = time.time() if iat is None else iat
    payload: dict[str, Any] = {
        "id": doc_id or f"trust-v{version}",
        "version": version,
        "iat": rfc3339(issued),
        "exp": rfc3339(issued + ttl_s),
        "env": env,
        "keys": list(keys),
    }
    if thresholds is not None:
        payload["thresholds"] = thresholds
    return payload


def sign_trust(payload: dict[str, Any], keys: Sequence[SigningKey]) -> bytes:
    return sign(TRUST_TYPE, json.dumps(payload).encode("utf-8"), keys)


def schedule_payload(
    schedule_id: str,
    version: int,
    entries: Sequence[dict[str, Any]],
    *,
    env: str,
    aud: Sequence[str],
    tz: str = "Asia/Ho_Chi_Minh",
    iat: float | None = None,
    ttl_s: float = 30 * 86400.0,
) -> dict[str, Any]:
    """A schedule document: a newer version replaces the older one whole."""
    issued = time.time() if iat is None else iat
    return {
        "id": schedule_id,
        "version": version,
        "seq": int(issued * 1000),
        "iat": rfc3339(issued),
        "exp": rfc3339(issued + ttl_s),
        "env": env,
        "aud": list(aud),
        "tz": tz,
        "entries": list(entries),
    }


def sign_schedule(payload: dict[str, Any], keys: Sequence[SigningKey]) -> bytes:
    return sign(SCHEDULE_TYPE, json.dumps(payload).encode("utf-8"), keys)
