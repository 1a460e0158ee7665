"""The hash chain and its signed checkpoints: pure functions, no database.

leaf(n)  = SHA-256(0x00 || JCS(event n))            RFC 8785 canonical JSON
head(0)  = 32 zero bytes
head(n)  = SHA-256(0x01 || uint64be(n) || head(n-1) || leaf(n))

The position is inside the hash, so moving an event changes every head after
it. Checkpoints are C2SP signed notes (tlog-checkpoint) with an Ed25519 key.
"""

import base64
import hashlib
import json
import os
import secrets
import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from app.audit.models import AuditEvent

EMPTY_HEAD = bytes(32)
_ED25519 = b"\x01"


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


_EVENT_KEYS = tuple(column.key for column in AuditEvent.__table__.columns)
_SAFE_INTEGER = 2**53 - 1


def _plain(value: Any) -> bool:
    """Whether json.dumps (sorted keys, no whitespace, UTF-8) writes ``value`` exactly as
    RFC 8785 does: no floats (JCS has its own number form), integers JSON can hold
    exactly, and keys whose code point order is their UTF-16 order (ASCII). Strings are
    escaped alike by both: the same characters, the same lower-case hex."""
    if value is None or isinstance(value, (str, bool)):
        return True
    if isinstance(value, int):
        return -_SAFE_INTEGER <= value <= _SAFE_INTEGER
    if isinstance(value, dict):
        return all(isinstance(k, str) and k.isascii() and _plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_plain(item) for item in value)
    return False


def canonical_event(event: AuditEvent | Mapping[str, Any]) -> bytes:
    """Every column of the event (an ORM object or a row read from the table),
    canonicalised (RFC 8785): a change to any field changes the leaf.

    The sequencer canonicalises every event, so the common case goes through the C
    JSON encoder, which gives the same bytes (tests/test_audit_chain.py holds it to
    rfc8785); anything else through rfc8785 itself.
    """
    if isinstance(event, AuditEvent):
        fields = {key: _json_value(getattr(event, key)) for key in _EVENT_KEYS}
    else:
        fields = {key: _json_value(event[key]) for key in _EVENT_KEYS}
    if _plain(fields):
        try:
            text = json.dumps(fields, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
            return text.encode("utf-8")
        except UnicodeEncodeError:
            pass  # a lone surrogate: rfc8785 says so
    return rfc8785.dumps(fields)


def leaf_hash(event: AuditEvent | Mapping[str, Any]) -> bytes:
    return hashlib.sha256(b"\x00" + canonical_event(event)).digest()


def next_head(previous: bytes, position: int, leaf: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + struct.pack(">Q", position) + previous + leaf).digest()


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    head: bytes
    signed_at: int  # Unix seconds

    def body(self) -> str:
        head = base64.b64encode(self.head).decode()
        return f"{self.origin}\n{self.size}\n{head}\ntime {self.signed_at}\n"


class CheckpointError(ValueError):
    """A checkpoint that does not parse or whose signature does not verify."""


def _key_hash(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + _ED25519 + public_key).digest()[:4]


class CheckpointSigner:
    """Signs checkpoints with an Ed25519 key kept in a file outside the database."""

    def __init__(self, private_key: Ed25519PrivateKey, name: str) -> None:
        self._key = private_key
        self.name = name
        self.verifier = CheckpointVerifier(name, self._public_bytes())

    def _public_bytes(self) -> bytes:
        return self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @classmethod
    def from_file(cls, path: Path, name: str, *, create: bool) -> "CheckpointSigner":
        if not path.exists():
            if not create:
                raise FileNotFoundError(f"no checkpoint signing key at {path}")
            key = Ed25519PrivateKey.generate()
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            # Written aside and linked into place: when several workers start at once,
            # one key wins and every worker loads that one.
            temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(pem)
            try:
                os.link(temporary, path)
            except FileExistsError:
                pass
            finally:
                temporary.unlink()
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an Ed25519 private key")
        return cls(key, name)

    def sign(self, checkpoint: Checkpoint) -> str:
        body = checkpoint.body()
        signature = self._key.sign(body.encode())
        blob = base64.b64encode(_key_hash(self.name, self._public_bytes()) + signature).decode()
        return f"{body}\n\u2014 {self.name} {blob}\n"


class CheckpointVerifier:
    """Verifies checkpoint notes against one public key (a C2SP verifier key)."""

    def __init__(self, name: str, public_key: bytes) -> None:
        self.name = name
        self._public = public_key
        self._key = Ed25519PublicKey.from_public_bytes(public_key)

    @property
    def vkey(self) -> str:
        """``name+keyhash+key``: what an outside party stores to check checkpoints."""
        key_hash = _key_hash(self.name, self._public).hex()
        return f"{self.name}+{key_hash}+{base64.b64encode(_ED25519 + self._public).decode()}"

    @classmethod
    def from_vkey(cls, vkey: str) -> "CheckpointVerifier":
        try:
            name, key_hash, encoded = vkey.strip().split("+", 2)
            raw = base64.b64decode(encoded, validate=True)
        except ValueError as exc:
            raise CheckpointError("malformed verifier key") from exc
        if raw[:1] != _ED25519 or len(raw) != 33:
            raise CheckpointError("not an Ed25519 verifier key")
        verifier = cls(name, raw[1:])
        if _key_hash(name, raw[1:]).hex() != key_hash:
            raise CheckpointError("verifier key hash does not match")
        return verifier

    def open(self, note: str) -> Checkpoint:
        """Parse a signed note and check its signature; CheckpointError otherwise."""
        body, sep, signatures = note.partition("\n\n")
        if not sep:
            raise CheckpointError("not a signed note")
        body += "\n"
        expected_hash = _key_hash(self.name, self._public)
        for line in signatures.splitlines():
            parts = line.split(" ")
            if len(parts) != 3 or parts[0] != "\u2014" or parts[1] != self.name:
                continue
            try:
                blob = base64.b64decode(parts[2], validate=True)
            except ValueError:
                continue
            if blob[:4] != expected_hash:
                continue
            try:
                self._key.verify(blob[4:], body.encode())
            except InvalidSignature as exc:
                raise CheckpointError("checkpoint signature does not verify") from exc
            return _parse_body(body)
        raise CheckpointError("checkpoint carries no signature by this key")


def _parse_body(body: str) -> Checkpoint:
    lines = body.rstrip("\n").split("\n")
    try:
        origin, size, head = lines[0], int(lines[1]), base64.b64decode(lines[2], validate=True)
        signed_at = next(int(x.split(" ", 1)[1]) for x in lines[3:] if x.startswith("time "))
    except (IndexError, ValueError, StopIteration) as exc:
        raise CheckpointError("malformed checkpoint body") from exc
    if size < 0 or len(head) != 32:
        raise CheckpointError("malformed checkpoint body")
    return Checkpoint(origin=origin, size=size, head=head, signed_at=signed_at)
