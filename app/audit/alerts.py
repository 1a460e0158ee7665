"""GET /v1/audit/alerts: patterns in the log a custodian should look into.

Computed from the log on request, over a period (by default the last
``alert_lookback_hours``), so there is nothing to keep in step and every
replica gives the same answer. Thresholds and windows are settings.

Who sees which alert:

- ``repeat_presentation`` (one child looked up by several organisations within
  days) concerns a child, so only the child's own authority sees it.
- ``not_found_spike``, ``volume_limit_client``, ``volume_limit_enquirer`` and
  ``purpose_not_allowed`` concern an enquirer's behaviour: they signal
  enumeration or misuse of the whole register, whichever authority's children
  were aimed at, and the lookups they count belong to no authority (a
  not-found answer or a refusal names none). Every custodian sees them. They
  name the enquirer and organisation, never an identifier asked for or an
  entry, so they disclose nothing about another authority's children.
- ``client_probing`` counts the not-found answers to one *client* (the event's
  ``principal``: a system client, or a signed-in user), whatever enquirer ids it
  named. A system client names its enquirers itself and can invent them, so the
  per-enquirer ``not_found_spike`` alone would miss 150 not-found lookups spread
  over 30 invented enquirers; this alert does not rely on the client's honesty.
  Like ``not_found_spike`` it counts answers that belong to no authority, so
  every custodian sees it.
- ``client_mismatch`` counts one client's ``refer_to_custodian`` answers about
  the reviewer's own children (an NHS number whose entry disagrees with the
  names or date of birth sent — the answer that lets a caller confirm a guessed
  birthday — or identifiers matching several entries; the event does not tell
  the two apart, so both count). Such an answer concerns an authority's child:
  only the authorities whose entries were matched see it, and each counts only
  the answers about its own children, events it may already read in
  ``/v1/audit/events``. An authority learns nothing about another's children.

Neither client alert names an enquirer (the ids are the client's claim): the
detail says how many different ids were named.
"""

import re
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from functools import partial
from typing import Annotated, Any, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)
from sqlalchemy import (
    Boolean,
    ColumnElement,
    Integer,
    Select,
    func,
    join,
    literal,
    literal_column,
    or_,
    select,
    true,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.visitors import InternalTraversal

from app.audit.models import AuditEvent, IndexTime
from app.audit.review import LOOKUP, EnquirerRead, begin_read_only, concerns
from app.auth.principals import Principal
from app.config import Settings
from app.db import utcnow
from app.errors import ProblemError
from app.identity.models import Organisation
from app.lookup.purposes import PURPOSE_WORDS
from app.register.csvformat import plural
from app.register.schemas import plausible_date

MAX_PERIOD = timedelta(days=31)


class AlertKind(StrEnum):
    not_found_spike = "not_found_spike"
    repeat_presentation = "repeat_presentation"
    volume_limit_client = "volume_limit_client"
    volume_limit_enquirer = "volume_limit_enquirer"
    purpose_not_allowed = "purpose_not_allowed"
    client_probing = "client_probing"
    client_mismatch = "client_mismatch"


_RFC_3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def _rfc_3339_only(value: object) -> object:
    """An RFC 3339 time with its offset, nothing looser: pydantic would also read
    ``0.5`` or ``1700000000`` as seconds since 1970."""
    if isinstance(value, datetime) or (isinstance(value, str) and _RFC_3339.fullmatch(value)):
        return value
    raise ValueError("must be a time as YYYY-MM-DDTHH:MM:SS with Z or an offset")


def _plausible_utc(value: datetime) -> datetime:
    """In UTC and within the register's window of dates, so that no window arithmetic
    on it (or the driver's conversion) runs off the calendar."""
    try:
        utc = value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("must be a time within the register's dates") from exc
    plausible_date(utc.date(), date.today())
    return utc


Instant = Annotated[AwareDatetime, BeforeValidator(_rfc_3339_only), AfterValidator(_plausible_utc)]


class AlertQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    period_from: Instant | None = Field(
        default=None, alias="from", description="Default: alert_lookback_hours ago."
    )
    period_to: Instant | None = Field(default=None, alias="to", description="Default: now.")

    @model_validator(mode="after")
    def _period_in_order(self) -> Self:
        if self.period_from and self.period_to and self.period_from >= self.period_to:
            raise ValueError("'from' must be before 'to'")
        return self


class OrganisationRef(BaseModel):
    id: uuid.UUID
    name: str | None


class AlertRead(BaseModel):
    kind: AlertKind
    detail: str
    window_start: datetime
    window_end: datetime
    count: int = Field(
        description=(
            "Not-found answers, referred answers, distinct organisations, or refusals "
            "in the window."
        )
    )
    threshold: int
    organisations: list[OrganisationRef] = Field(description="The enquiring organisations.")
    principal: str | None = Field(description="The system client or user that made the lookups.")
    enquirer: EnquirerRead | None
    entry_id: uuid.UUID | None = Field(description="Your entry (repeat_presentation only).")


class AlertReport(BaseModel):
    period_from: datetime
    period_to: datetime
    alerts: list[AlertRead]


def _window(start: datetime, end: datetime) -> list[Any]:
    """``(start, end]`` as the alerts' indexes hold the time (app.audit.models.IndexTime):
    a range each scan stops at. With the plain column the planner walked
    ix_audit_events_occurred_at, reading every event of the window from the heap."""
    at = IndexTime(AuditEvent.occurred_at.expression)
    return [
        at > IndexTime(literal(start, AuditEvent.occurred_at.type)),
        at <= IndexTime(literal(end, AuditEvent.occurred_at.type)),
    ]


def _lookups() -> list[Any]:
    """Lookups, the rows of the alerts' partial indexes (migrations 0014 and 0016), as a
    literal: a bound value would not match a partial index in a prepared statement's
    generic plan, nor on SQLite."""
    return [AuditEvent.event_type == literal_column(f"'{LOOKUP}'")]


def _not_found_between(start: datetime, end: datetime) -> list[Any]:
    """Not-found lookups in ``(start, end]``, read from ix_audit_events_not_found_index_
    time (migration 0014), which carries every column the scans read."""
    not_found = AuditEvent.outcome == literal_column("'not_on_plan'")
    return [*_lookups(), not_found, *_window(start, end)]


def peak_count(
    times: Sequence[datetime], window: timedelta, since: datetime
) -> tuple[int, datetime, datetime] | None:
    """The most events in any window ``(t - window, t]`` that ends at an event at or
    after ``since``: (count, first event, last event). ``times`` ascending."""
    best: tuple[int, datetime, datetime] | None = None
    start = 0
    for end, at in enumerate(times):
        while times[start] <= at - window:
            start += 1
        if at >= since and (best is None or end - start + 1 > best[0]):
            best = (end - start + 1, times[start], at)
    return best


def peak_distinct(
    events: Sequence[tuple[datetime, uuid.UUID]], window: timedelta, since: datetime
) -> tuple[set[uuid.UUID], datetime, datetime] | None:
    """Like ``peak_count``, counting distinct organisations instead of events."""
    best: tuple[set[uuid.UUID], datetime, datetime] | None = None
    inside: Counter[uuid.UUID] = Counter()
    start = 0
    for at, organisation in events:
        inside[organisation] += 1
        while events[start][0] <= at - window:
            gone = events[start][1]
            inside[gone] -= 1
            if not inside[gone]:
                del inside[gone]
            start += 1
        if at >= since and (best is None or len(inside) > len(best[0])):
            best = (set(inside), events[start][0], at)
    return best


# Groups over the threshold in the whole period beyond which the period is counted again
# by spans (``_suspects``) before any group's events are read: at the national rate each
# of 2,000 enquirers has a dozen not-found answers a day, so after a busy ten minutes
# every one is over it, and reading and windowing each one's events costs more than the
# count by spans (issue 18).
FEW_SUSPECTS = 50


class _Span(ColumnElement[int]):
    """The number of the ``window``-long span of time since 1970 that a time falls in:
    any window ``(t - window, t]`` lies within two consecutive spans."""

    type = Integer()
    inherit_cache = True
    _traverse_internals = [  # noqa: RUF012
        ("value", InternalTraversal.dp_clauseelement),
        ("seconds", InternalTraversal.dp_plain_obj),
    ]

    def __init__(self, value: ColumnElement[Any], window: timedelta) -> None:
        self.value = value
        self.seconds = max(1, int(window.total_seconds()))


@compiles(_Span, "postgresql")
def _span_postgresql(element: _Span, compiler: SQLCompiler, **kw: object) -> str:
    # date_part is double precision: EXTRACT's numeric cost more than the scan itself.
    at = compiler.process(element.value, **kw)
    return f"CAST(floor(date_part('epoch', {at}) / {element.seconds}) AS bigint)"


@compiles(_Span)
def _span_sqlite(element: _Span, compiler: SQLCompiler, **kw: object) -> str:
    at = compiler.process(element.value, **kw)
    return f"(CAST(strftime('%s', {at}) AS INTEGER) / {element.seconds})"


def _suspects(
    scope: list[Any], key: InstrumentedAttribute[Any], window: timedelta, threshold: int
) -> Select[Any]:
    """The (organisation, ``key``) groups with at least ``threshold`` events in some two
    consecutive window-long spans: the only ones that can hold that many in one window.
    Each event is counted in its span and in the next (a pair ending there), so it is
    one hashed aggregate of the scope, no sort; it has about a group per event, so it is
    run only past FEW_SUSPECTS."""
    shifts = union_all(
        select(literal_column("0").label("shift")), select(literal_column("1"))
    ).subquery("shifts")
    pair = _Span(AuditEvent.occurred_at.expression, window) + shifts.c.shift
    return (
        select(AuditEvent.organisation_id, key)
        .distinct()
        .select_from(join(AuditEvent, shifts, true()))
        .where(*scope)
        .group_by(AuditEvent.organisation_id, key, pair)
        .having(func.count() >= threshold)
    )


class _Within(ColumnElement[bool]):
    """``later - earlier`` is under ``window`` and a second: a test that may pass a pair
    a little over the window (SQLite subtracts days as floating point), never fails one
    inside it. ``peak_count`` then counts exactly."""

    type = Boolean()
    inherit_cache = True
    _traverse_internals = [  # noqa: RUF012
        ("earlier", InternalTraversal.dp_clauseelement),
        ("later", InternalTraversal.dp_clauseelement),
        ("seconds", InternalTraversal.dp_plain_obj),
    ]

    def __init__(
        self, earlier: ColumnElement[Any], later: ColumnElement[Any], window: timedelta
    ) -> None:
        self.earlier, self.later = earlier, later
        self.seconds = int(window.total_seconds()) + 1


@compiles(_Within, "postgresql")
def _within_postgresql(element: _Within, compiler: SQLCompiler, **kw: object) -> str:
    earlier, later = compiler.process(element.earlier, **kw), compiler.process(element.later, **kw)
    return f"({later} - {earlier} < interval '{element.seconds} seconds')"


@compiles(_Within)
def _within_sqlite(element: _Within, compiler: SQLCompiler, **kw: object) -> str:
    earlier, later = compiler.process(element.earlier, **kw), compiler.process(element.later, **kw)
    return f"(julianday({later}) - julianday({earlier}) < {element.seconds} / 86400.0)"


def _hot(scope: list[Any], count: "_Count", since: datetime) -> Select[Any]:
    """The (organisation, key) groups of ``scope`` with an event at or after ``since``
    whose ``threshold - 1``-th predecessor in the group is within the window of it: the
    groups that reach the threshold in a window ending in the period (and, on SQLite,
    perhaps one a second over it). A sort of the scope by group and time: for the
    suspects' events alone, never the whole scope (80 ms for 30,000 events)."""
    at = IndexTime(AuditEvent.occurred_at.expression)
    ranked = (
        select(
            AuditEvent.organisation_id.label("organisation_id"),
            count.key.label("key"),
            at.label("at"),
            func.lag(at, literal(count.threshold - 1, Integer()))
            .over(partition_by=(AuditEvent.organisation_id, count.key), order_by=at)
            .label("back"),
        )
        .where(*scope)
        .subquery("ranked")
    )
    return (
        select(ranked.c.organisation_id, ranked.c.key)
        .distinct()
        .where(
            ranked.c.at >= IndexTime(literal(since, AuditEvent.occurred_at.type)),
            _Within(ranked.c.back, ranked.c.at, count.window),
        )
    )


@dataclass(frozen=True)
class _Count:
    """One kind of alert's count of a scope's events per (organisation, ``key``): at
    least ``threshold`` in a ``window``."""

    key: InstrumentedAttribute[Any]
    window: timedelta
    threshold: int


@dataclass(frozen=True)
class _Busiest:
    organisation_id: uuid.UUID | None
    events: list[Any]  # the group's events in scope, oldest first (id, principal, ...)
    count: int  # in its busiest window, from first to last
    first: datetime
    last: datetime


async def _busiest_windows(
    session: AsyncSession,
    scope: Callable[[datetime], list[Any]],
    counts: Sequence[_Count],
    since: datetime,
) -> list[list[_Busiest]]:
    """Per count, and per (organisation, key), the busiest window of the events in
    ``scope(since - window)``, where it reaches the threshold. Only a group with that
    many events in the period can reach it in one window; when more than FEW_SUSPECTS
    do, only those with that many in two consecutive window-long spans (``_suspects``,
    a costlier count). Of those, the database says which reach it (``_hot``); only
    their events are read, once for every count.

    Statements on the log alone, never a join of the log with an aggregate of itself:
    with stale statistics the planner estimated one suspect group and joined by nested
    loop, reading the scope once per group (issue 18). Each is the only plan there is,
    and reads only columns the alerts' index (migration 0014) carries, so that for the
    national not-found scans it is an index-only scan of the window, never its heap;
    what else an alert shows (the enquirer's details) is read by id for the alerts
    alone. (One count of the groups of both keys, rolled up here, read the scope once
    but cost more in Python than it saved: 12 ms for 3,918 groups.)"""
    suspects: list[set[tuple[Any, Any]]] = []
    for count in counts:
        scoped = scope(since - count.window)
        # Events with no key are grouped too and passed over here: ``key IS NOT NULL`` in
        # the statement let PostgreSQL read a volume limit's index led by the key, every
        # lookup of the log, for the window.
        totals = (
            select(AuditEvent.organisation_id, count.key)
            .where(*scoped)
            .group_by(AuditEvent.organisation_id, count.key)
            .having(func.count() >= count.threshold)
        )
        over = {(row[0], row[1]) for row in await session.execute(totals) if row[1] is not None}
        if len(over) > FEW_SUSPECTS:
            spans = _suspects(scoped, count.key, count.window, count.threshold)
            over = {(row[0], row[1]) for row in await session.execute(spans) if row[1] is not None}
        if over:
            # Which of the suspects reach it, from their events' times in the database:
            # most do not, and their events need not be read into Python (15 µs each).
            by_key = _hot([*scoped, count.key.in_({key for _, key in over})], count, since)
            over &= {(row[0], row[1]) for row in await session.execute(by_key)}
        suspects.append(over)
    reading = [(count, over) for count, over in zip(counts, suspects, strict=True) if over]
    if not reading:
        return [[] for _ in counts]
    rows = (
        await session.execute(
            select(
                AuditEvent.organisation_id,
                AuditEvent.id,
                AuditEvent.principal,
                AuditEvent.enquirer_id,
                AuditEvent.occurred_at,
            )
            # By the keys alone, their groups' organisations kept below: with the pairs
            # PostgreSQL tested each of the window's events against every pair (19 ms
            # for 27 pairs of 30,000 events, 9 ms thus; issue 18).
            .where(
                *scope(since - max(count.window for count, _ in reading)),
                or_(*(count.key.in_({key for _, key in over}) for count, over in reading)),
            )
            .order_by(AuditEvent.occurred_at, AuditEvent.id)
        )
    ).all()
    found = []
    for count, over in zip(counts, suspects, strict=True):
        start = since - count.window
        events: dict[tuple[Any, Any], list[Any]] = {}
        for row in rows if over else ():
            group = (row.organisation_id, getattr(row, count.key.key))
            if group in over and row.occurred_at > start:
                events.setdefault(group, []).append(row)
        busiest = []
        for (organisation_id, _), listed in events.items():
            peak = peak_count([e.occurred_at for e in listed], count.window, since)
            if peak is not None and peak[0] >= count.threshold:
                busiest.append(_Busiest(organisation_id, listed, *peak))
        found.append(busiest)
    return found


async def _enquirers(session: AsyncSession, ids: list[uuid.UUID]) -> dict[uuid.UUID, Any]:
    """The enquirer's details of the given events, by primary key."""
    if not ids:
        return {}
    rows = await session.execute(
        select(AuditEvent.id, AuditEvent.enquirer).where(AuditEvent.id.in_(ids))
    )
    return {row.id: row.enquirer for row in rows}


async def _not_found(
    session: AsyncSession, settings: Settings, since: datetime, until: datetime
) -> list[AlertRead]:
    """Not-found answers nationally (every custodian sees them): to one enquirer, and
    to one client whatever enquirers it named, counted in the same reads."""
    threshold = settings.alert_not_found_threshold
    client = _Count(
        AuditEvent.principal,
        timedelta(minutes=settings.alert_client_window_minutes),
        settings.alert_client_not_found_threshold,
    )
    spikes, probing = await _busiest_windows(
        session,
        partial(_not_found_between, end=until),
        [
            _Count(
                AuditEvent.enquirer_id,
                timedelta(minutes=settings.alert_not_found_window_minutes),
                threshold,
            ),
            client,
        ],
        since,
    )
    enquirers = await _enquirers(session, [busiest.events[-1].id for busiest in spikes])
    alerts = []
    for busiest in spikes:
        latest = busiest.events[-1]
        enquirer = enquirers.get(latest.id)
        alerts.append(
            AlertRead(
                kind=AlertKind.not_found_spike,
                detail=(
                    f"{busiest.count} lookups by one enquirer found no plan within "
                    f"{settings.alert_not_found_window_minutes} minutes "
                    f"(threshold {threshold}): possible enumeration."
                ),
                window_start=busiest.first,
                window_end=busiest.last,
                count=busiest.count,
                threshold=threshold,
                organisations=[OrganisationRef(id=busiest.organisation_id, name=None)]
                if busiest.organisation_id
                else [],
                principal=latest.principal,
                enquirer=EnquirerRead.model_validate(enquirer) if enquirer else None,
                entry_id=None,
            )
        )
    return alerts + [
        _client_alert(AlertKind.client_probing, busiest, client, settings) for busiest in probing
    ]


async def _client_mismatch(
    session: AsyncSession,
    settings: Settings,
    reviewer: Principal,
    since: datetime,
    until: datetime,
) -> list[AlertRead]:
    """Answers about the reviewer's children referred to a custodian, per client (that
    authority only)."""

    def referred(start: datetime) -> list[Any]:
        referrals = [
            *_lookups(),
            # Not the plain column: the volume limits' national index of referrals
            # matched it, and read every referral of the window
            # (models.AUTHORITY_REFERRALS).
            func.coalesce(AuditEvent.outcome, literal_column("''"))
            == literal_column("'refer_to_custodian'"),
            *_window(start, until),
        ]
        # The ids of the authority's referrals and of its multi-authority ones, each
        # found by time from its own index, alone: with the window beside them
        # PostgreSQL read it from a volume limit's index of every lookup.
        return [concerns(reviewer.organisation_id, start, until, referrals)]

    count = _Count(
        AuditEvent.principal,
        timedelta(minutes=settings.alert_client_window_minutes),
        settings.alert_client_mismatch_threshold,
    )
    [found] = await _busiest_windows(session, referred, [count], since)
    return [_client_alert(AlertKind.client_mismatch, busiest, count, settings) for busiest in found]


def _client_alert(
    kind: AlertKind, busiest: _Busiest, count: _Count, settings: Settings
) -> AlertRead:
    """A client alert: it names the client, and how many enquirer ids it named."""
    minutes, threshold = settings.alert_client_window_minutes, count.threshold
    first, last = busiest.first, busiest.last
    principal = busiest.events[-1].principal
    named = len({e.enquirer_id for e in busiest.events if first <= e.occurred_at <= last})
    who = "system" if principal.startswith("client:") else "user"
    if kind is AlertKind.client_probing:
        detail = (
            f"{busiest.count} lookups by one {who} found no plan within {minutes} minutes "
            f"(threshold {threshold}), naming {named} different enquirer ids: "
            "possible enumeration."
        )
    else:
        detail = (
            f"{busiest.count} lookups by one {who} about your children were referred to a "
            f"custodian within {minutes} minutes (threshold {threshold}), naming "
            f"{named} different enquirer ids: identifiers that disagree with the "
            "entry, as when guessing a child's names or date of birth."
        )
    return AlertRead(
        kind=kind,
        detail=detail,
        window_start=first,
        window_end=last,
        count=busiest.count,
        threshold=threshold,
        organisations=(
            [OrganisationRef(id=busiest.organisation_id, name=None)]
            if busiest.organisation_id
            else []
        ),
        principal=principal,
        enquirer=None,
        entry_id=None,
    )


async def _repeat_presentations(
    session: AsyncSession,
    settings: Settings,
    reviewer: Principal,
    since: datetime,
    until: datetime,
) -> list[AlertRead]:
    window = timedelta(days=settings.alert_repeat_days)
    threshold = settings.alert_repeat_sites_threshold
    # From the authority's index of answers that named an entry, which carries the entry
    # and the organisation (migration 0016): both statements read the days' window from
    # the index alone on PostgreSQL. Two statements on the log alone, the children seen
    # by enough organisations, then their enquiries: one joining the log with an
    # aggregate of itself switched to a nested loop on stale statistics, reading the
    # scope once per suspect: 96.7 s at 2 million events (issue 18).
    scope = [
        *_lookups(),
        AuditEvent.authority_id == reviewer.organisation_id,
        AuditEvent.entry_id.is_not(None),
        *_window(since - window, until),
    ]
    suspects = (
        await session.scalars(
            select(AuditEvent.entry_id)
            .where(*scope)
            .group_by(AuditEvent.entry_id)
            .having(func.count(AuditEvent.organisation_id.distinct()) >= threshold)
        )
    ).all()
    if not suspects:
        return []
    rows = (
        await session.execute(
            select(AuditEvent.entry_id, AuditEvent.occurred_at, AuditEvent.organisation_id)
            .where(
                *scope,
                AuditEvent.entry_id.in_(suspects),
                AuditEvent.organisation_id.is_not(None),
            )
            .order_by(AuditEvent.entry_id, AuditEvent.occurred_at)
        )
    ).all()
    groups: dict[uuid.UUID, list[tuple[datetime, uuid.UUID]]] = {}
    for row in rows:
        groups.setdefault(row.entry_id, []).append((row.occurred_at, row.organisation_id))
    alerts = []
    for entry_id, events in groups.items():
        peak = peak_distinct(events, window, since)
        if peak is None or len(peak[0]) < threshold:
            continue
        organisations, first, last = peak
        alerts.append(
            AlertRead(
                kind=AlertKind.repeat_presentation,
                detail=(
                    f"One of your children was looked up by {len(organisations)} organisations "
                    f"within {settings.alert_repeat_days} days (threshold {threshold})."
                ),
                window_start=first,
                window_end=last,
                count=len(organisations),
                threshold=threshold,
                organisations=[OrganisationRef(id=o, name=None) for o in sorted(organisations)],
                principal=None,
                enquirer=None,
                entry_id=entry_id,
            )
        )
    return alerts


_REFUSAL_GROUPS = {
    # A client's limit concerns the system, whoever it named; the others one enquirer.
    AlertKind.volume_limit_client: ("organisation_id", "principal"),
    AlertKind.volume_limit_enquirer: ("organisation_id", "principal", "enquirer_id"),
    AlertKind.purpose_not_allowed: ("organisation_id", "principal", "enquirer_id", "purpose"),
}


def _refusal_detail(kind: AlertKind, group: Any) -> str:
    refused = plural(group.refused, "lookup")
    were = "was" if group.refused == 1 else "were"
    if kind is AlertKind.volume_limit_client:
        return f"{refused} by one system {were} refused at its volume limit."
    if kind is AlertKind.volume_limit_enquirer:
        return f"{refused} by one enquirer {were} refused at their volume limit."
    purpose = PURPOSE_WORDS.get(group.purpose, group.purpose)
    return (
        f'{refused} {were} refused for giving the purpose "{purpose}", '
        "which the organisation may not give."
    )


async def _refusals(session: AsyncSession, since: datetime, until: datetime) -> list[AlertRead]:
    """Any lookup refused at a volume limit or for a purpose the organisation may
    not give is an alert: the threshold is one."""
    alerts = []
    for kind, names in _REFUSAL_GROUPS.items():
        keys = [getattr(AuditEvent, name) for name in names]
        # From the index of refused lookups alone (migration 0016): a few, where it read
        # every lookup of the window.
        scope = [
            *_lookups(),
            AuditEvent.refusal.is_not(None),
            AuditEvent.refusal == kind.value,
            *_window(since, until),
        ]
        named = "enquirer_id" in names
        if named:
            # With the enquirer as the group's latest refusal named them, in the same
            # read: a statement per group was one per enquirer id a client invents.
            ranked = (
                select(
                    *keys,
                    func.count().over(partition_by=keys).label("refused"),
                    func.min(AuditEvent.occurred_at).over(partition_by=keys).label("first"),
                    func.max(AuditEvent.occurred_at).over(partition_by=keys).label("last"),
                    func.row_number()
                    .over(
                        partition_by=keys,
                        order_by=(AuditEvent.occurred_at.desc(), AuditEvent.id.desc()),
                    )
                    .label("nth"),
                    AuditEvent.enquirer,
                )
                .where(*scope)
                .subquery("ranked")
            )
            statement = select(ranked).where(ranked.c.nth == 1)
        else:
            statement = (
                select(
                    *keys,
                    func.count().label("refused"),
                    func.min(AuditEvent.occurred_at).label("first"),
                    func.max(AuditEvent.occurred_at).label("last"),
                )
                .where(*scope)
                .group_by(*keys)
            )
        for group in (await session.execute(statement)).all():
            enquirer = None
            if named and group.principal is not None and group.enquirer:
                enquirer = EnquirerRead.model_validate(group.enquirer)
            alerts.append(
                AlertRead(
                    kind=kind,
                    detail=_refusal_detail(kind, group),
                    window_start=group.first,
                    window_end=group.last,
                    count=group.refused,
                    threshold=1,
                    organisations=(
                        [OrganisationRef(id=group.organisation_id, name=None)]
                        if group.organisation_id
                        else []
                    ),
                    principal=group.principal,
                    enquirer=enquirer,
                    entry_id=None,
                )
            )
    return alerts


async def _name_organisations(session: AsyncSession, alerts: list[AlertRead]) -> None:
    ids = {ref.id for alert in alerts for ref in alert.organisations}
    if not ids:
        return
    rows = await session.execute(
        select(Organisation.id, Organisation.name).where(Organisation.id.in_(ids))
    )
    names = dict(rows.all())
    for alert in alerts:
        for ref in alert.organisations:
            ref.name = names.get(ref.id)


async def alert_report(
    session: AsyncSession, settings: Settings, reviewer: Principal, query: AlertQuery
) -> AlertReport:
    """Every kind of alert in the period, newest first, read in a transaction that
    blocks no writer."""
    until = query.period_to or utcnow()
    since = query.period_from or until - timedelta(hours=settings.alert_lookback_hours)
    if until - since > MAX_PERIOD:
        raise ProblemError(422, "Invalid request", "The period may be at most 31 days.")
    await begin_read_only(session)
    found = [
        *await _repeat_presentations(session, settings, reviewer, since, until),
        *await _not_found(session, settings, since, until),
        *await _client_mismatch(session, settings, reviewer, since, until),
        *await _refusals(session, since, until),
    ]
    await _name_organisations(session, found)
    found.sort(key=lambda alert: alert.window_end, reverse=True)
    return AlertReport(period_from=since, period_to=until, alerts=found)
