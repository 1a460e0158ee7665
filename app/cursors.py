"""Opaque keyset cursors for paginated lists.

A cursor the service did not issue (not base64, not JSON, the wrong number or
kind of parts, a part that is no date, time or id) is a 422 naming the ``cursor``
query parameter, like any other invalid parameter: never a 500.
"""

import base64
import binascii
import json
import uuid
from datetime import UTC, date, datetime

from app.errors import ProblemError


def bad_cursor(parameter: str = "cursor") -> ProblemError:
    return ProblemError(
        422,
        "Invalid request",
        "The cursor is not one this service issued.",
        errors=[
            {
                "loc": ["query", parameter],
                "msg": "not a cursor this service issued: pass back next_cursor as it was",
                "type": "cursor",
            }
        ],
    )


def encode_cursor(*parts: str) -> str:
    """Opaque to the caller; it only ever pages within what the caller may read."""
    raw = json.dumps(list(parts), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, size: int) -> list[str]:
    """The ``size`` string parts of ``cursor``, or :func:`bad_cursor`."""
    try:
        parts = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error, RecursionError) as exc:
        raise bad_cursor() from exc
    if not (
        isinstance(parts, list) and len(parts) == size and all(isinstance(p, str) for p in parts)
    ):
        raise bad_cursor()
    return parts


def cursor_time(text: str) -> datetime:
    """An aware time, in UTC: a far offset on year 1 or 9999 fails here, not in the driver."""
    try:
        value = datetime.fromisoformat(text)
        if value.tzinfo is None:
            raise bad_cursor()
        return value.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise bad_cursor() from exc


def cursor_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise bad_cursor() from exc


def cursor_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError as exc:
        raise bad_cursor() from exc
