"""Opaque keyset cursors for paginated lists."""

import base64
import binascii
import json
import uuid
from datetime import datetime

from app.errors import ProblemError


def bad_cursor() -> ProblemError:
    return ProblemError(422, "Invalid request", "The cursor is not one this service issued.")


def encode_cursor(*parts: str) -> str:
    """Opaque to the caller; it only ever pages within what the caller may read."""
    raw = json.dumps(list(parts), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, size: int) -> list[str]:
    try:
        parts = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error) as exc:
        raise bad_cursor() from exc
    if not (
        isinstance(parts, list) and len(parts) == size and all(isinstance(p, str) for p in parts)
    ):
        raise bad_cursor()
    return parts


def cursor_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise bad_cursor() from exc
    if value.tzinfo is None:
        raise bad_cursor()
    return value


def cursor_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError as exc:
        raise bad_cursor() from exc
