"""Volume limits per client and per enquirer (DESIGN.md check 7).

Every lookup event, answered or refused, counts: a caller past the limit stays
refused until its oldest counted lookup leaves the window.

A limit of ``limit`` lookups per ``window`` is reached exactly when the
``limit``-th newest lookup of the caller lies inside the window, and it frees
when that lookup leaves it. So each limit is one scalar expression, "the
``limit``-th newest lookup's time, if it is in the window" (NULL otherwise),
that reads at most ``limit`` entries of a partial index of lookups (migrations
0007 and 0009), and nothing of the caller's history before the window, on
SQLite and PostgreSQL alike (on PostgreSQL, a caller at its limit reads the
limit's worth twice; see _nth_newest_lookup_postgresql for how):
``(principal, occurred_at)`` for the client, ``(principal, enquirer_id,
occurred_at)`` for the enquirer, so the enquirer's count reads only that
enquirer's lookups. They ride along in the statement that loads the principal
(``app/lookup/routes.py``), so the limits cost no round trip of their own.

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

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Label,
    bindparam,
    case,
    literal_column,
    select,
    tuple_,
)
from sqlalchemy.orm import InstrumentedAttribute

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
) -> ColumnElement[datetime]:
    """The time of the caller's ``{prefix}_nth``-th newest lookup since ``{prefix}_since``
    (only those answered ``outcome``, if given): NULL while fewer are in the window."""
    principal = bindparam("limit_principal", type_=AuditEvent.principal.type)
    since = bindparam(f"{prefix}_since", type_=AuditEvent.occurred_at.type)
    offset: BindParameter[int] = bindparam(f"{prefix}_offset")
    # Literals, not bound values: they are what lets PostgreSQL (in the generic plan of
    # a prepared statement, too) and SQLite use the partial indexes of migrations 0007
    # and 0009, which hold lookups only, or the referrals only.
    kept = [AuditEvent.event_type == literal_column("'lookup'")]
    if outcome is not None:
        kept.append(AuditEvent.outcome == literal_column(f"'{outcome}'"))
    if dialect == "sqlite":
        # SQLite takes the partial index for the plain range and stops its walk at the
        # window's start: the newest first, at most the limit's worth.
        caller = [AuditEvent.principal == principal]
        if by_enquirer:
            enquirer = bindparam("limit_enquirer_id", type_=AuditEvent.enquirer_id.type)
            caller.append(AuditEvent.enquirer_id == enquirer)
        return (
            select(AuditEvent.occurred_at)
            .where(*caller, *kept, AuditEvent.occurred_at >= since)
            .order_by(AuditEvent.occurred_at.desc())
            .offset(offset)
            .limit(1)
            .scalar_subquery()
        )
    return _nth_newest_lookup_postgresql(
        by_enquirer=by_enquirer, principal=principal, since=since, offset=offset, kept=kept
    )


def _nth_newest_lookup_postgresql(
    *,
    by_enquirer: bool,
    principal: BindParameter[str],
    since: BindParameter[datetime],
    offset: BindParameter[int],
    kept: list[ColumnElement[bool]],
) -> ColumnElement[datetime]:
    """PostgreSQL's form of _nth_newest_lookup: whatever the statistics say, a walk of
    the partial index that reads at most the limit's worth and nothing of the caller's
    history before the window.

    A plain range ``occurred_at >= since`` lets the planner walk
    ``ix_audit_events_occurred_at`` instead, through every principal's events in the
    window (its statistics lag behind an append-only log and put next to no rows in the
    window: 5 ms a lookup under load). A row comparison ``(principal, occurred_at) >=
    (p, since)`` beside ``principal = p`` keeps the planner on the partial index, but a
    walk down from the caller's newest does not stop at it (PostgreSQL ends a scan on a
    row comparison's first column only): while the caller is within its limit, that
    walk read its whole history, 89 buffers for a client with 4,898 past lookups against
    3 for the plain range.

    So first "is the limit reached": the limit-th *oldest* lookup in the window, walked
    up from the window's start (where the row comparison positions the scan) and
    stopped at the end of the caller's entries (``lead <= value``, a bound the scan
    ends at), or at the limit's worth. The caller's column is ranged over, not
    ``lead = value``, which would drop it from the index order and start the scan at
    the caller's oldest entry. Only when it is reached, the limit-th *newest* as
    before, the walk down with the row comparison: the limit reached, the limit's worth
    of the caller's newest are all in the window, and the walk stops there. (That second
    statement's plan is the planner's choice, as the whole count was before; it runs
    only for a caller at its limit, whose lookup is refused.)
    """
    caller = [AuditEvent.principal == principal]
    keys: list[InstrumentedAttribute[str | None]] = [AuditEvent.principal]
    values = [principal]
    if by_enquirer:
        # Index (principal, enquirer_id, occurred_at): the principal fixed, the range
        # on the enquirer.
        enquirer = bindparam("limit_enquirer_id", type_=AuditEvent.enquirer_id.type)
        caller.append(AuditEvent.enquirer_id == enquirer)
        keys.append(AuditEvent.enquirer_id)
        values.append(enquirer)
        ranged = [*kept, caller[0]]
    else:
        # Index (principal, occurred_at).
        ranged = kept
    lead, value = keys[-1], values[-1]
    limit_reached = (
        select(AuditEvent.occurred_at)
        .where(
            *ranged,
            tuple_(lead, AuditEvent.occurred_at) >= tuple_(value, since),
            lead <= value,
        )
        .order_by(lead, AuditEvent.occurred_at)
        .offset(offset)
        .limit(1)
        .scalar_subquery()
    )
    nth_newest = (
        select(AuditEvent.occurred_at)
        .where(
            *caller,
            *kept,
            tuple_(*keys, AuditEvent.occurred_at) >= tuple_(*values, since),
        )
        .order_by(AuditEvent.occurred_at.desc())
        .offset(offset)
        .limit(1)
        .scalar_subquery()
    )
    return case((limit_reached.is_not(None), nth_newest))


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
