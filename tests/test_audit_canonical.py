"""The leaf of an event is SHA-256 over its RFC 8785 (JCS) form, which an outside
verifier recomputes with any JCS library. The sequencer writes the common case with
the C JSON encoder (app/audit/chain.py); these hold it to the rfc8785 library byte
for byte, and show that what the fast path cannot write goes to rfc8785 itself."""

import random
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import rfc8785

from app.audit.chain import canonical_event
from app.audit.service import new_event

# Characters JSON escapes, and some it must not: DEL, the line and paragraph
# separators, a decomposed accent, non-BMP (surrogate pairs in UTF-16), quotes.
ALPHABET = [chr(c) for c in range(0x20)] + list(
    "\"\\/'\x7f\u2028\u2029\u00e9e\u0301\u00f6\u0141\u4e2d\U0001f600\U00010348 aZ09.-"
)


def _text(rng: random.Random) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 12)))


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(7 if depth < 3 else 4)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 7, 2**53 - 1, -(2**53) + 1, rng.randint(-(10**9), 10**9)])
    if kind == 3:
        return _text(rng)
    if kind == 4:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    # keys of the kinds the service writes: ASCII, in any order and case
    keys = ["id", "Name", "name", "_x", "a1", "A", "z", "matched", "entry_id", "role", ""]
    return {rng.choice(keys): _value(rng, depth + 1) for _ in range(rng.randint(0, 5))}


def _event(rng: random.Random) -> dict[str, Any]:
    return new_event(
        occurred_at=datetime(2026, 11, 23, 5, rng.randrange(60), 7, rng.randrange(10**6), UTC),
        event_type=rng.choice(["lookup", "auth.refused", "register.created"]),
        principal=f"client:{_text(rng)}",
        organisation_id=uuid.UUID(int=rng.getrandbits(128)),
        enquirer=_value(rng),
        enquirer_id=_text(rng),
        purpose="unscheduled_care",
        reason=_text(rng),
        query=_value(rng),
        outcome=rng.choice(["on_plan", "not_on_plan", "refused"]),
        disclosed=_value(rng),
        detail=_value(rng),
        entry_version=rng.choice([None, 1, 42]),
        source_address="203.0.113.7",
    )


def _jcs(event: dict[str, Any]) -> bytes:
    """The event as rfc8785 writes it, with the same value conversions."""
    values = {
        key: value.astimezone(UTC).isoformat(timespec="microseconds")
        if isinstance(value, datetime)
        else str(value)
        if isinstance(value, uuid.UUID)
        else value
        for key, value in event.items()
    }
    return rfc8785.dumps(values)


def test_the_fast_canonical_form_is_rfc8785_byte_for_byte() -> None:
    rng = random.Random(8785)
    for _ in range(3000):
        event = _event(rng)
        assert canonical_event(event) == _jcs(event)


@pytest.mark.parametrize(
    "detail",
    [
        {"score": 0.1},  # a float: JCS's own number form
        {"score": 1e21},
        {"size": 2**53},  # beyond JSON's exact integers: rfc8785 refuses it
        {"\u00e9t\u00e9": 1},  # a non-ASCII key
        {"\U0001f600": 1, "\uff61": 2},  # UTF-16 order differs from code point order
        {"text": "\ud800"},  # a lone surrogate: not UTF-8, refused
    ],
)
def test_what_the_fast_path_cannot_write_is_written_by_rfc8785(detail: dict[str, Any]) -> None:
    event = new_event(
        occurred_at=datetime(2026, 11, 23, tzinfo=UTC), event_type="lookup", detail=detail
    )
    try:
        expected = _jcs(event)
    except rfc8785.CanonicalizationError as exc:
        with pytest.raises(type(exc)):
            canonical_event(event)
    else:
        assert canonical_event(event) == expected
