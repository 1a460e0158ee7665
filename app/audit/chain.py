"""The hash chain and its signed checkpoints: pure functions, no database.

leaf(n)  = SHA-256(0x00 || JCS(event n))            RFC 8785 canonical JSON
head(0)  = 32 zero bytes
head(n)  = SHA-256(0x01 || uint64be(n) || head(n-1) || leaf(n))

The position is inside the hash, so moving an event changes every head after
it. Checkpoints are C2SP signed notes (tlog-checkpoint) with an Ed25519 key.

The key can be rotated: a verifier-key history (public keys, each with the time it
became valid and the time it was retired, each endorsed by the one before) lets every
checkpoint verify under the key that signed it, and only if the time it signed falls
within that key's validity. Pure but for the key files, which are read and written here.
"""

import base64
import hashlib
import json
import os
import secrets
import struct
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
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

    # How the verifier reports it (app/audit/verify.py).
    finding = "forged_checkpoint"


class UnknownKeyError(CheckpointError):
    """Signed by no key of the verifier-key history: to a verifier, a key it was not given
    is anyone's key, so this is reported as a forgery too."""


class RetiredKeyError(CheckpointError):
    """Signed by a known key at a time outside that key's validity: after its retirement
    (a retired key may be lost or stolen, so what it signs later counts for nothing), or
    before it came into use."""

    finding = "retired_key"


class SigningRefused(CheckpointError):
    """The signer's key may not sign now: its history retired it or does not name it.
    Whatever it signed would fail verification, so it signs nothing."""


class KeyHistoryError(CheckpointError):
    """A verifier-key history that does not parse or does not hold together, or a key file
    and history that disagree: nothing is signed or rotated on the strength of it."""


def _key_hash(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + _ED25519 + public_key).digest()[:4]


def _public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _vkey(name: str, public_key: bytes) -> str:
    key_hash = _key_hash(name, public_key).hex()
    return f"{name}+{key_hash}+{base64.b64encode(_ED25519 + public_key).decode()}"


def _parse_vkey(vkey: str) -> tuple[str, bytes]:
    try:
        name, key_hash, encoded = vkey.strip().split("+", 2)
        raw = base64.b64decode(encoded, validate=True)
    except ValueError as exc:
        raise CheckpointError("malformed verifier key") from exc
    if raw[:1] != _ED25519 or len(raw) != 33:
        raise CheckpointError("not an Ed25519 verifier key")
    if _key_hash(name, raw[1:]).hex() != key_hash:
        raise CheckpointError("verifier key hash does not match")
    return name, raw[1:]


def _utc(at: int) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat()


@dataclass(frozen=True)
class VerifierKey:
    """One checkpoint key as auditors see it: its public half and when it could sign, in
    Unix seconds, inclusive, compared with the ``time`` line each checkpoint signs."""

    name: str
    public_key: bytes
    # 0: since before the history was kept (a key adopted as the history's first).
    valid_from: int = 0
    # None: the key that signs now.
    retired_at: int | None = None
    # The previous key's signature over the hand-over (_handover): whoever can write the
    # history but not read the retiring key cannot slip a key of their own in.
    endorsement: bytes | None = None

    @property
    def key_hash(self) -> bytes:
        return _key_hash(self.name, self.public_key)

    @property
    def vkey(self) -> str:
        """``name+keyhash+key``: the C2SP verifier key."""
        return _vkey(self.name, self.public_key)

    def valid_at(self, at: int) -> bool:
        return self.valid_from <= at and (self.retired_at is None or at <= self.retired_at)

    def signed(self, signature: bytes, message: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def outside(self, at: int) -> str:
        """Why a signature by this key at ``at`` does not count (at is outside its validity)."""
        who = f"key {self.key_hash.hex()}"
        if self.retired_at is not None and at > self.retired_at:
            return f"signed at {_utc(at)} by {who}, retired at {_utc(self.retired_at)}"
        return f"signed at {_utc(at)} by {who}, not valid until {_utc(self.valid_from)}"


def _handover(old: VerifierKey, new: VerifierKey) -> bytes:
    """What the retiring key signs to endorse its successor."""
    return (
        f"cp-register checkpoint key rotation\n{old.vkey} retired {old.retired_at}\n"
        f"{new.vkey} valid {new.valid_from}\n"
    ).encode()


def _check_history(keys: Sequence[VerifierKey]) -> None:
    """Oldest first; each key after the first endorsed by the one before it, which is
    retired; no key twice. The first is the anchor: the key auditors were first given."""
    if not keys:
        raise KeyHistoryError("the verifier-key history names no key")
    seen: set[tuple[str, bytes]] = set()
    for index, key in enumerate(keys):
        if (key.name, key.key_hash) in seen:
            raise KeyHistoryError(f"key {key.key_hash.hex()} appears twice in the history")
        seen.add((key.name, key.key_hash))
        if key.retired_at is not None and key.retired_at < key.valid_from:
            raise KeyHistoryError(f"key {key.key_hash.hex()} is retired before it is valid")
        if index == 0:
            continue
        previous = keys[index - 1]
        if previous.retired_at is None:
            raise KeyHistoryError("only the newest key of the history may be unretired")
        if key.valid_from < previous.valid_from:
            raise KeyHistoryError("the history's keys are not in the order they were used")
        if key.endorsement is None or not previous.signed(
            key.endorsement, _handover(previous, key)
        ):
            raise KeyHistoryError(
                f"key {key.key_hash.hex()} is not endorsed by the key it succeeded"
            )


def _extends(held: Sequence[VerifierKey], new: Sequence[VerifierKey]) -> bool:
    """Whether ``new`` is ``held`` with keys added by rotation: the same keys, the newest
    held one at most retired since."""
    if len(new) < len(held) or tuple(new[: len(held) - 1]) != tuple(held[:-1]):
        return False
    last, same = held[-1], new[len(held) - 1]
    return (same.name, same.public_key, same.valid_from, same.endorsement) == (
        last.name,
        last.public_key,
        last.valid_from,
        last.endorsement,
    ) and last.retired_at in (None, same.retired_at)


VERIFIER_KEYS_FORMAT = "cp-register checkpoint verifier keys v1"


def _parse_history(data: bytes) -> tuple[VerifierKey, ...]:
    try:
        document = json.loads(data)
        if document.get("format") != VERIFIER_KEYS_FORMAT:
            raise KeyHistoryError("not a cp-register verifier-key history")
        keys = []
        for item in document["keys"]:
            name, public = _parse_vkey(item["verifier_key"])
            valid_from, retired_at = item["valid_from"], item["retired_at"]
            endorsement = item.get("endorsement")
            if type(valid_from) is not int or not (retired_at is None or type(retired_at) is int):
                raise KeyHistoryError("a key's times are not whole Unix seconds")
            keys.append(
                VerifierKey(
                    name,
                    public,
                    valid_from=valid_from,
                    retired_at=retired_at,
                    endorsement=None
                    if endorsement is None
                    else base64.b64decode(endorsement, validate=True),
                )
            )
    except KeyHistoryError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise KeyHistoryError("malformed verifier-key history") from exc
    _check_history(keys)
    return tuple(keys)


_FileState = tuple[int, int, int, int]


def _file_state(path: Path) -> _FileState:
    """What changes when a file is replaced (renamed over, or a mounted secret swapped)."""
    stat = os.stat(path)
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


class CheckpointVerifier:
    """Verifies checkpoint notes, each against the key that signed it (found by the
    signature's key hash), and only if signed (the note's own ``time``) while that key
    was valid.

    One key valid at all times (``CheckpointVerifier(name, key)``, ``from_vkey``), or the
    history of a rotated key (``of_keys``, ``from_file``). Bound to a file, ``refresh``
    re-reads it in place when it changed, so whoever holds this verifier (the sequencer's
    signer, the verify endpoint) sees a rotation without being rebuilt.
    """

    def __init__(self, name: str, public_key: bytes) -> None:
        self._keys: tuple[VerifierKey, ...] = (VerifierKey(name, public_key),)
        self.path: Path | None = None
        self._seen: _FileState | None = None

    @classmethod
    def of_keys(cls, keys: Sequence[VerifierKey]) -> "CheckpointVerifier":
        _check_history(keys)
        verifier = cls(keys[-1].name, keys[-1].public_key)
        verifier._keys = tuple(keys)
        return verifier

    @classmethod
    def from_vkey(cls, vkey: str) -> "CheckpointVerifier":
        return cls(*_parse_vkey(vkey))

    @classmethod
    def from_file(cls, path: Path) -> "CheckpointVerifier":
        """A published verifier-key history (``to_json``), bound to its file."""
        state = _file_state(path)
        verifier = cls.of_keys(_parse_history(path.read_bytes()))
        verifier.path, verifier._seen = path, state
        return verifier

    @property
    def keys(self) -> tuple[VerifierKey, ...]:
        return self._keys

    @property
    def current(self) -> VerifierKey:
        """The newest key: the one that signs now (or last signed, if all are retired)."""
        return self._keys[-1]

    @property
    def name(self) -> str:
        return self.current.name

    @property
    def vkey(self) -> str:
        """``name+keyhash+key`` of the current key: what an outside party stores."""
        return self.current.vkey

    def key_for(self, name: str, public_key: bytes) -> VerifierKey | None:
        return next((k for k in self._keys if k.name == name and k.public_key == public_key), None)

    def bind(self, path: Path) -> None:
        """Follow the history at ``path`` from now on (``refresh``)."""
        self.path, self._seen = path, None
        self.refresh()

    def refresh(self) -> bool:
        """Re-read the bound history if its file changed; True if it did. No file keeps the
        keys held (a key not yet given a history, or a history removed: never a reason to
        trust more keys). A history that does not extend the one read before, by endorsed
        rotations only, is refused (KeyHistoryError), as is a malformed one: the keys held
        are kept."""
        if self.path is None:
            return False
        try:
            state = _file_state(self.path)
        except FileNotFoundError:
            return False
        if state == self._seen:
            return False
        keys = _parse_history(self.path.read_bytes())
        if self._seen is not None and not _extends(self._keys, keys):
            raise KeyHistoryError(
                f"{self.path} does not extend the verifier-key history held: restart to accept it"
            )
        self._keys, self._seen = keys, state
        return True

    def open(self, note: str) -> Checkpoint:
        """Parse a signed note and check its signature and its time against the key that
        signed it; CheckpointError (UnknownKeyError, RetiredKeyError) otherwise."""
        body, sep, signatures = note.partition("\n\n")
        if not sep:
            raise CheckpointError("not a signed note")
        body += "\n"
        keys = {(key.name, key.key_hash): key for key in self._keys}
        refused: RetiredKeyError | None = None
        for line in signatures.splitlines():
            parts = line.split(" ")
            if len(parts) != 3 or parts[0] != "\u2014":
                continue
            try:
                blob = base64.b64decode(parts[2], validate=True)
            except ValueError:
                continue
            key = keys.get((parts[1], blob[:4]))
            if key is None:
                continue
            if not key.signed(blob[4:], body.encode()):
                raise CheckpointError("checkpoint signature does not verify")
            checkpoint = _parse_body(body)
            if key.valid_at(checkpoint.signed_at):
                return checkpoint
            refused = RetiredKeyError(key.outside(checkpoint.signed_at))
        if refused is not None:
            raise refused
        raise UnknownKeyError(
            "checkpoint carries no signature by a key of the verifier-key history"
        )

    def to_json(self) -> str:
        """The history as published: public keys and their validity, nothing secret."""
        keys = [
            {
                "verifier_key": key.vkey,
                "valid_from": key.valid_from,
                "retired_at": key.retired_at,
                "endorsement": None
                if key.endorsement is None
                else base64.b64encode(key.endorsement).decode(),
            }
            for key in self._keys
        ]
        return json.dumps({"format": VERIFIER_KEYS_FORMAT, "keys": keys}, indent=2) + "\n"

    def rotated(
        self, retiring: Ed25519PrivateKey, successor: bytes, *, at: int, overlap: int
    ) -> "CheckpointVerifier":
        """This history with its current key retired ``overlap`` seconds after ``at``, and
        ``successor`` valid from ``at``, endorsed by the retiring key."""
        current = self.current
        if current.public_key != _public_bytes(retiring) or current.retired_at is not None:
            raise KeyHistoryError("the key to retire is not the history's current key")
        old = replace(current, retired_at=at + overlap)
        new = VerifierKey(current.name, successor, valid_from=at)
        new = replace(new, endorsement=retiring.sign(_handover(old, new)))
        return CheckpointVerifier.of_keys([*self._keys[:-1], old, new])


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


# --- the key files -----------------------------------------------------------------------


def default_verifier_keys_path(key_path: Path) -> Path:
    """Where the verifier-key history lives unless configured: beside the key."""
    return key_path.with_name(f"{key_path.stem}.verifiers.json")


def _pending_path(key_path: Path) -> Path:
    """The successor key during a rotation (made exclusively: one rotation at a time)."""
    return key_path.with_name(f"{key_path.name}.next")


def _pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_private(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_replacing(path: Path, data: bytes, mode: int) -> None:
    """Written aside, flushed, renamed into place: a reader sees the old file or the new."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _create_key(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Written aside and linked into place: when several workers start at once, one key
    # wins and every worker loads that one.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(_pem(Ed25519PrivateKey.generate()))
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass
    finally:
        temporary.unlink()


class CheckpointSigner:
    """Signs checkpoints with an Ed25519 key kept in a file outside the database, and only
    while its verifier (the key's history) says the key may sign: a retired key signs
    nothing."""

    def __init__(
        self, private_key: Ed25519PrivateKey, name: str, verifier: CheckpointVerifier | None = None
    ) -> None:
        self.name = name
        public = _public_bytes(private_key)
        # One attribute, so that a reload (in a worker thread) swaps key and hash together.
        self._signing = (private_key, public)
        self.verifier = verifier if verifier is not None else CheckpointVerifier(name, public)
        self.key_path: Path | None = None
        self._key_seen: _FileState | None = None

    @property
    def public_key(self) -> bytes:
        return self._signing[1]

    @property
    def vkey(self) -> str:
        """The verifier key of the key that signs (during an overlap, not always the
        history's current one)."""
        return _vkey(self.name, self.public_key)

    @classmethod
    def from_file(
        cls, path: Path, name: str, *, create: bool, verifier_keys: Path | None = None
    ) -> "CheckpointSigner":
        """The key at ``path`` (made if missing and ``create``), following its verifier-key
        history at ``verifier_keys`` (by default beside the key). Until a history is
        written the key is valid at all times, as before keys were rotated."""
        history = verifier_keys if verifier_keys is not None else default_verifier_keys_path(path)
        if not path.exists():
            if not create:
                raise FileNotFoundError(f"no checkpoint signing key at {path}")
            if history.exists():
                raise FileNotFoundError(
                    f"no checkpoint signing key at {path}, but {history} names one: restore "
                    "the key file, or finish its rotation (`cpr audit keygen --rotate`)"
                )
            _create_key(path)
        state = _file_state(path)
        signer = cls(_load_private(path), name)
        signer.key_path, signer._key_seen = path, state
        signer.verifier.bind(history)
        return signer

    def follow(self, key_path: Path, verifier_keys: Path) -> None:
        """Take the key and its history from these files from now on (``reload``)."""
        if self.key_path != key_path:
            self.key_path, self._key_seen = key_path, None
        if self.verifier.path != verifier_keys:
            self.verifier.bind(verifier_keys)

    def _refusal(self, public_key: bytes, at: int) -> str | None:
        entry = self.verifier.key_for(self.name, public_key)
        if entry is None:
            return (
                f"the checkpoint key {_key_hash(self.name, public_key).hex()} is not in the "
                "verifier-key history"
            )
        return None if entry.valid_at(at) else entry.outside(at)

    def refusal(self, at: int) -> str | None:
        """Why this key may not sign a checkpoint dated ``at``, or None."""
        return self._refusal(self.public_key, at)

    def reload(self) -> bool:
        """Re-read the history and the key file if they changed, and sign from now on with
        the key on disk if the history lets it sign now; otherwise go on with the key held,
        for as long as the history lets it (a secret whose files arrive one at a time).
        True when the signing key changed. KeyHistoryError or OSError: nothing changed."""
        self.verifier.refresh()
        if self.key_path is None:
            return False
        state = _file_state(self.key_path)
        if state == self._key_seen:
            return False
        key = _load_private(self.key_path)
        public = _public_bytes(key)
        if public == self.public_key:
            self._key_seen = state
            return False
        if self._refusal(public, int(time.time())) is not None:
            return False  # not (yet) one the history lets sign: look again next time
        self._signing, self._key_seen = (key, public), state
        return True

    def sign(self, checkpoint: Checkpoint) -> str:
        private, public = self._signing
        refusal = self._refusal(public, checkpoint.signed_at)
        if refusal is not None:
            raise SigningRefused(refusal)
        body = checkpoint.body()
        signature = private.sign(body.encode())
        blob = base64.b64encode(_key_hash(self.name, public) + signature).decode()
        return f"{body}\n\u2014 {self.name} {blob}\n"


def _history_or_adopted(
    verifier_keys: Path, name: str, key: Ed25519PrivateKey
) -> CheckpointVerifier:
    """The history on disk, or, for a key that has none yet, one naming it alone, valid
    since before any checkpoint (every checkpoint it signed must still verify)."""
    if verifier_keys.exists():
        return CheckpointVerifier.from_file(verifier_keys)
    return CheckpointVerifier.of_keys([VerifierKey(name, _public_bytes(key))])


def _check_agree(history: CheckpointVerifier, name: str, public_key: bytes, where: Path) -> None:
    """Rotation and keygen change nothing unless the key file is the history's current key."""
    current = history.current
    if (current.name, current.public_key, current.retired_at) != (name, public_key, None):
        raise KeyHistoryError(
            f"the checkpoint key {_key_hash(name, public_key).hex()} at {where} is not "
            f"the current key of its verifier-key history {history.path} "
            f"(key {current.key_hash.hex()}): they disagree, so nothing was changed"
        )


def ensure_key(path: Path, name: str, verifier_keys: Path) -> CheckpointVerifier:
    """`cpr audit keygen`: the key and its history, made if missing (an existing key with
    no history is adopted as its first key), and checked to agree."""
    pending = _pending_path(path)
    if pending.exists():
        raise KeyHistoryError(
            f"a rotation is under way or was interrupted ({pending}): "
            "run `cpr audit keygen --rotate` to finish it"
        )
    made = not path.exists()
    signer = CheckpointSigner.from_file(path, name, create=True, verifier_keys=verifier_keys)
    if verifier_keys.exists():
        _check_agree(signer.verifier, name, signer.public_key, path)
        return signer.verifier
    first = VerifierKey(name, signer.public_key, valid_from=int(time.time()) if made else 0)
    history = CheckpointVerifier.of_keys([first])
    _write_replacing(verifier_keys, history.to_json().encode(), 0o644)
    history.path = verifier_keys
    return history


def rotate_key(
    path: Path, name: str, verifier_keys: Path, *, overlap: int, now: int | None = None
) -> tuple[CheckpointVerifier, bool]:
    """`cpr audit keygen --rotate`: a new key, valid from ``now``, endorsed by the old
    one, which is retired ``overlap`` seconds later. Each step is durable before the next:

    1. the new key is written beside the old one (``<key>.next``, made exclusively: one
       rotation at a time), after checking that key file and history agree;
    2. the history naming it replaces the old history;
    3. the new key replaces the key file: the old private key is gone (auditors need only
       its public half, which the history keeps; a retired key kept is one that can still
       forge checkpoints dated within its validity).

    Interrupted after 2, running it again finishes 3 (the second value is then True);
    interrupted before, it says which file to remove.
    """
    now = int(time.time()) if now is None else now
    pending = _pending_path(path)
    try:
        fd = os.open(pending, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _finish_rotation(path, pending, verifier_keys), True
    try:
        with os.fdopen(fd, "wb") as file:
            if not path.exists():
                raise KeyHistoryError(
                    f"no checkpoint key at {path} to rotate: create one with `cpr audit keygen`"
                )
            retiring = _load_private(path)
            history = _history_or_adopted(verifier_keys, name, retiring)
            _check_agree(history, name, _public_bytes(retiring), path)
            successor = Ed25519PrivateKey.generate()
            rotated = history.rotated(retiring, _public_bytes(successor), at=now, overlap=overlap)
            file.write(_pem(successor))
            file.flush()
            os.fsync(file.fileno())
        _write_replacing(verifier_keys, rotated.to_json().encode(), 0o644)
    except BaseException:
        pending.unlink(missing_ok=True)
        raise
    os.replace(pending, path)
    _fsync_directory(path.parent)
    rotated.path = verifier_keys
    return rotated, False


def _finish_rotation(path: Path, pending: Path, verifier_keys: Path) -> CheckpointVerifier:
    """A rotation stopped between writing the history and replacing the key file."""
    try:
        successor: Ed25519PrivateKey | None = _load_private(pending)
    except (OSError, ValueError):
        successor = None  # still being written, or never finished
    history = CheckpointVerifier.from_file(verifier_keys) if verifier_keys.exists() else None
    if (
        successor is None
        or history is None
        or history.current.public_key != _public_bytes(successor)
    ):
        raise KeyHistoryError(
            f"a rotation is under way, or was interrupted before it wrote the verifier-key "
            f"history: if no other rotation is running, remove {pending} and rotate again"
        )
    os.replace(pending, path)
    _fsync_directory(path.parent)
    return history
