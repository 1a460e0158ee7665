"""Volume limits per client and per enquirer (DESIGN.md check 7).

Every lookup event, answered or refused, counts: a caller past the limit stays
refused until its oldest counted lookup leaves the window.

A limit of ``limit`` lookups per ``window`` is reached exactly when the
``limit``-th newest lookup of the caller lies inside the window, and it frees
when that lookup leaves it. So each limit is one scalar subquery, "the
``limit``-th newest lookup's time, if it is in the window" (NULL otherwise),
that walks at most ``limit`` entries of a partial index of lookups (migration
0005): ``(principal, occurred_at)`` for the client, ``(principal, enquirer_id,
occurred_at)`` for the enquirer, so the enquirer's count reads only that
enquirer's lookups. Both ride along in the statement that loads the principal
(``app/auth/principals.py``), so the limits cost no round trip of their own.

Exact under concurrency: the count and the event's INSERT run in one transaction
holding a lock per client and per enquirer (PostgreSQL advisory locks, on SQLite
the write lock), so a burst is counted one lookup at a time, whichever worker or
replica answers it, and the log stays the one record of what was counted.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Label, ScalarSelect, bindparam, literal_column, select, tuple_

from app.audit.models import AuditEvent
from app.config import Settings

CLIENT_FULL_AT = "client_limit_reached_at"
ENQUIRER_FULL_AT = "enquirer_limit_reached_at"
PROBING_FULL_AT = "probing_limit_reached_at"
# The answers that betray probing whatever enquirer a client names: an NHS number
# whose entry disagrees with the names or date of birth sent (guessing a child's
# birthday confirms it by the answer changing), or several entries matched.
PROBING_OUTCOME = "refer_to_custodian"


@dataclass(frozen=True)
class OverLimit:
    refusal: str
    retry_after_seconds: int


def _nth_newest_lookup(
    *, by_enquirer: bool, prefix: str, dialect: str, outcome: str | None = None
) -> ScalarSelect[datetime]:
    """The time of the caller's ``{prefix}_nth``-th newest lookup since ``{prefix}_since``
    (only those answered ``outcome``, if given)."""
    principal = bindparam("limit_principal", type_=AuditEvent.principal.type)
    since = bindparam(f"{prefix}_since", type_=AuditEvent.occurred_at.type)
    keys = [AuditEvent.principal]
    values = [principal]
    if by_enquirer:
        enquirer = bindparam("limit_enquirer_id", type_=AuditEvent.enquirer_id.type)
        keys.append(AuditEvent.enquirer_id)
        values.append(enquirer)
    # "occurred_at >= since". On PostgreSQL, as a row comparison over the partial
    # index's columns, which only that index can use: with a plain range on occurred_at,
    # its statistics (which lag behind an append-only log) put next to no rows in the
    # window and it walked ix_audit_events_occurred_at instead, through every
    # principal's events in the window, at 5 ms a lookup under load. SQLite's planner
    # (no statistics unless asked) takes the partial index for the plain range, and
    # would not use the row comparison to bound its walk.
    if dialect == "sqlite":
        window = AuditEvent.occurred_at >= since
    else:
        window = tuple_(*keys, AuditEvent.occurred_at) >= tuple_(*values, since)
    statement = select(AuditEvent.occurred_at).where(
        *(key == value for key, value in zip(keys, values, strict=True)),
        # A literal, not a bound value: it is what lets PostgreSQL (in the generic plan
        # of a prepared statement, too) and SQLite use the partial indexes of migration
        # 0005, which hold lookups only.
        AuditEvent.event_type == literal_column("'lookup'"),
        window,
    )
    if outcome is not None:
        # A literal too: migration 0009's partial index holds only these answers.
        statement = statement.where(AuditEvent.outcome == literal_column(f"'{outcome}'"))
    return (
        statement.order_by(AuditEvent.occurred_at.desc())
        .offset(bindparam(f"{prefix}_offset"))
        .limit(1)
        .scalar_subquery()
    )


def limit_columns(dialect: str) -> tuple[Label[datetime], ...]:
    """Columns to add to the principal's statement (parameters from limit_parameters)."""
    return (
        _nth_newest_lookup(by_enquirer=False, prefix="client", dialect=dialect).label(
            CLIENT_FULL_AT
        ),
        _nth_newest_lookup(by_enquirer=True, prefix="enquirer", dialect=dialect).label(
            ENQUIRER_FULL_AT
        ),
        _nth_newest_lookup(
            by_enquirer=False, prefix="probing", dialect=dialect, outcome=PROBING_OUTCOME
        ).label(PROBING_FULL_AT),
    )


def limit_lock_names(principal: str, enquirer_id: str | None) -> list[str]:
    """What a lookup locks while it counts and writes (app/db.py HotConnection.serialise)."""
    names = [f"lookup-limit:client:{principal}"]
    if enquirer_id is not None:
        names.append(f"lookup-limit:enquirer:{principal}:{enquirer_id}")
    return names


def limit_parameters(
    settings: Settings, *, principal: str, enquirer_id: str | None, now: datetime
) -> dict[str, Any]:
    """Bound values for limit_columns(). With no enquirer known yet (the request will be
    refused for another reason) the enquirer's count finds nothing."""
    return {
        "limit_principal": principal,
        "limit_enquirer_id": enquirer_id,
        "client_since": now - timedelta(seconds=settings.lookup_client_window_seconds),
        "client_offset": max(settings.lookup_limit_per_client - 1, 0),
        "enquirer_since": now - timedelta(seconds=settings.lookup_enquirer_window_seconds),
        "enquirer_offset": max(settings.lookup_limit_per_enquirer - 1, 0),
        "probing_since": now - timedelta(seconds=settings.lookup_probing_window_seconds),
        "probing_offset": max(settings.lookup_probing_limit_per_client - 1, 0),
    }


def over_limit(settings: Settings, row: Mapping[str, Any], now: datetime) -> OverLimit | None:
    """The first limit reached, from a row carrying limit_columns(); None within limits."""
    limits = (
        ("volume_limit_client", CLIENT_FULL_AT, settings.lookup_client_window_seconds),
        ("volume_limit_enquirer", ENQUIRER_FULL_AT, settings.lookup_enquirer_window_seconds),
        ("probing_limit_client", PROBING_FULL_AT, settings.lookup_probing_window_seconds),
    )
    for refusal, column, window in limits:
        reached_at: datetime | None = row[column]
        if reached_at is not None:
            frees_at = reached_at + timedelta(seconds=window)
            return OverLimit(refusal, max(1, math.ceil((frees_at - now).total_seconds())))
    return None
