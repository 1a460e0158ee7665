"""Volume limits per client and per enquirer (README, "Security model", check 7).

Every lookup event, answered or refused, counts: a caller past the limit stays
refused until its oldest counted lookup leaves the window.

A limit of ``limit`` lookups per ``window`` is reached exactly when the
``limit``-th newest lookup of the caller lies inside the window, and it frees
when that lookup leaves it. So each limit is one scalar subquery, "the
``limit``-th newest lookup's time, if it is in the window" (NULL otherwise),
over a partial index of lookups whose leading columns are the caller's key and
then the time (app.audit.models.IndexTime; migration 0012): ``principal`` for
the client's count and the probing count (an index of referrals only),
``(enquirer_id, principal)`` for the enquirer's. The window is a range of that
index the scan stops at, and no other index can serve it (see
_nth_newest_lookup). Nothing of the caller's history before the window is read,
whatever the statistics say (issue 18; ``tests/test_query_plans.py`` holds both
databases to it, with no statistics and after ANALYZE, custom and generic
plans). They ride along in the statement that loads the principal
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

from sqlalchemy import Integer, Label, ScalarSelect, bindparam, literal_column, select

from app.audit.models import AuditEvent, IndexTime
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
    offset = bindparam(f"{prefix}_offset", type_=Integer())
    caller = [AuditEvent.principal == principal]
    if by_enquirer:
        enquirer = bindparam("limit_enquirer_id", type_=AuditEvent.enquirer_id.type)
        caller.append(AuditEvent.enquirer_id == enquirer)
    # Literals, not bound values: they are what lets PostgreSQL (in the generic plan of a
    # prepared statement, too) and SQLite use the partial indexes, which hold lookups
    # only, or referrals only.
    kept = [AuditEvent.event_type == literal_column("'lookup'")]
    if outcome is not None:
        kept.append(AuditEvent.outcome == literal_column(f"'{outcome}'"))
    # The window as a plain range on the limit index's time (IndexTime: on PostgreSQL an
    # expression only the limit indexes hold) after the key's equalities: the walk down
    # from the caller's newest stops at the window's start, or after the limit's worth;
    # a bitmap scan reads the window's entries only. (Neither a plain range on
    # occurred_at, which after ANALYZE PostgreSQL read from ix_audit_events_occurred_at
    # through every principal's events in the window, nor a row comparison
    # ``(principal, occurred_at) >= (p, since)``, which the walk down does not stop at:
    # 89 buffers for a client with 4,898 past lookups against 3.)
    at = IndexTime(AuditEvent.occurred_at.expression)
    return (
        select(AuditEvent.occurred_at)
        .where(*caller, *kept, at >= IndexTime(since))
        .order_by(at.desc())
        .offset(offset)
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
