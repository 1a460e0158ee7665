"""Custodians review the enquiries about their own authority's children (the queries;
the routes are app/audit/review_routes.py, the web pages app/web/).

Every statement starts from ``readable_enquiries``, which already holds the
authority filter: an event about another authority's child is never read, so it
cannot be returned, counted or exported by mistake. A child's NHS number is a
filter only in POST bodies (search, export): identifiers never travel in URLs.
"""

import csv
import io
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Self

from fastapi import Request
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)
from sqlalchemy import (
    ColumnElement,
    CompoundSelect,
    Select,
    false,
    func,
    literal,
    literal_column,
    or_,
    select,
    true,
    tuple_,
    union,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import aliased
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.sqltypes import NullType
from sqlalchemy.sql.util import ClauseAdapter
from sqlalchemy.sql.visitors import InternalTraversal

from app.audit.models import (
    AskedNhsNumber,
    AuditEvent,
    AuditEventAuthority,
    IndexTime,
    JsonText,
    ParsedJson,
)
from app.audit.service import authority_event, commit_or_fail_closed
from app.auth.principals import Principal
from app.cursors import cursor_id, cursor_time, decode_cursor, encode_cursor
from app.db import READ_ONLY_OPTION, utcnow
from app.identity.models import REFERENCE_POINT_KINDS, Organisation
from app.lookup.schemas import Purpose, enquirer_key
from app.register.deps import load_entry
from app.register.identifiers import normalise_nhs_number
from app.register.models import RegisterEntry
from app.register.queries import only, own_entries
from app.spreadsheet import safe_cell

LOOKUP = "lookup"
DEFAULT_PAGE = 100
MAX_PAGE = 500
EXPORT_CHUNK = 500


# --- schemas ---------------------------------------------------------------------------


class Outcome(StrEnum):
    on_plan = "on_plan"
    not_on_plan = "not_on_plan"
    refer_to_custodian = "refer_to_custodian"
    refused = "refused"


NhsNumber = Annotated[str, StringConstraints(max_length=14), AfterValidator(normalise_nhs_number)]
# Normalised as the lookup records it (app/lookup/schemas.py), so any spelling finds it.
EnquirerId = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=64),
    AfterValidator(enquirer_key),
]
Cursor = Annotated[str, StringConstraints(max_length=400, pattern=r"^[A-Za-z0-9_-]+$")]
Limit = Annotated[int, Field(ge=1, le=MAX_PAGE)]


class EnquiryFilters(BaseModel):
    """Filters that name no child, so they may travel in a query string."""

    model_config = ConfigDict(extra="forbid")

    entry_id: uuid.UUID | None = None
    enquirer_id: EnquirerId | None = None
    organisation_id: uuid.UUID | None = Field(
        default=None, description="The enquiring organisation."
    )
    purpose: Purpose | None = None
    outcome: Outcome | None = None
    occurred_from: AwareDatetime | None = Field(
        default=None, alias="from", description="Inclusive."
    )
    occurred_to: AwareDatetime | None = Field(default=None, alias="to", description="Exclusive.")

    @model_validator(mode="after")
    def _period_in_order(self) -> Self:
        if self.occurred_from and self.occurred_to and self.occurred_from >= self.occurred_to:
            raise ValueError("'from' must be before 'to'")
        return self


class EnquiryListQuery(EnquiryFilters):
    """GET /v1/audit/events: an NHS number here is refused, not ignored."""

    cursor: Cursor | None = None
    limit: Limit = DEFAULT_PAGE


class EnquiryExport(EnquiryFilters):
    """The filters, plus the child's NHS number: only ever in a request body."""

    nhs_number: NhsNumber | None = None


class EnquirySearch(EnquiryExport):
    cursor: Cursor | None = None
    limit: Limit = DEFAULT_PAGE


class PageQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cursor: Cursor | None = None
    limit: Limit = DEFAULT_PAGE


class EnquirerRead(BaseModel):
    """The member of staff who asked, as the enquiring system named them."""

    id: str
    name: str | None = None
    role: str | None = None


class IdentifiersRead(BaseModel):
    """The normalised identifiers the enquirer sent (names case- and accent-folded)."""

    nhs_number: str | None = None
    given_name: str | None = None
    family_name: str | None = None
    date_of_birth: str | None = None


class ContactRead(BaseModel):
    name: str
    phone: str


class DisclosedRead(BaseModel):
    """Exactly what the answer told the enquirer."""

    status: str
    categories: list[str] | None = None
    unborn: bool | None = None
    contact: ContactRead | None = None


class AuditEventRead(BaseModel):
    """One enquiry about one of the custodian's children.

    Built field by field: request ids, source addresses, principals and the
    matching detail stay in the log, for the operator.
    """

    id: uuid.UUID
    occurred_at: datetime
    organisation_id: uuid.UUID | None
    organisation_name: str | None
    enquirer: EnquirerRead | None
    purpose: str | None
    reason: str | None
    identifiers: IdentifiersRead | None
    outcome: str
    disclosed: DisclosedRead | None
    entry_id: uuid.UUID | None = Field(description="The entry disclosed (on_plan only).")
    entry_version: int | None
    matched_entry_ids: list[uuid.UUID] = Field(
        description="Your entries the identifiers matched: for refer_to_custodian, "
        "the ones to resolve between."
    )


class AuditEventPage(BaseModel):
    items: list[AuditEventRead]
    next_cursor: str | None = Field(
        description="Pass back as `cursor` for the next (older) page; null on the last page."
    )


def _older_than(statement: "Enquiries", cursor: str) -> "Enquiries":
    """Keyset condition for newest-first order on (occurred_at, id): a row comparison,
    which the custodians' indexes (ending in occurred_at, id) and the link rows' (ending
    in occurred_at, event_id) start the page's walk at, on both databases, however deep
    the page."""
    at_text, id_text = decode_cursor(cursor, 2)
    at = literal(cursor_time(at_text), AuditEvent.occurred_at.type)
    event_id = literal(cursor_id(id_text), AuditEvent.id.type)
    link = AuditEventAuthority.__table__.c
    return statement.where(
        tuple_(_time(AuditEvent.occurred_at), AuditEvent.id) < tuple_(_time(at), event_id),
        links=(tuple_(link.occurred_at, link.event_id) < tuple_(at, event_id),),
    )


def _time(value: Any) -> IndexTime:
    """A time as the custodians' indexes hold it (IndexTime)."""
    return IndexTime(value.expression if hasattr(value, "expression") else value)


class _AnyOf(ColumnElement[bool]):
    """``column`` is one of ``values`` (a SELECT of one column). On PostgreSQL as
    ``column = ANY(ARRAY(values))``: the handful of values is read first and each row
    fetched through the column's index (or several such reads combined), where ``IN
    (values)`` let the planner walk a whole index of the log, testing each event."""

    # Untyped: SQLite would be sent a boolean as ``(…) = 1``, which no index serves.
    type = NullType()  # type: ignore[assignment]
    inherit_cache = True
    _traverse_internals = [  # noqa: RUF012
        ("column", InternalTraversal.dp_clauseelement),
        ("values", InternalTraversal.dp_clauseelement),
    ]

    def __init__(
        self, column: ColumnElement[Any], values: Select[Any] | CompoundSelect[Any]
    ) -> None:
        self.column = column
        self.values = values.scalar_subquery()


@compiles(_AnyOf, "postgresql")
def _any_of_postgresql(element: _AnyOf, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.column, **kw)
    return f"{column} = ANY(ARRAY{compiler.process(element.values, **kw)})"


@compiles(_AnyOf)
def _any_of(element: _AnyOf, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.column, **kw)
    return f"{column} IN {compiler.process(element.values, **kw)}"


# --- reading ---------------------------------------------------------------------------


class Enquiries:
    """The enquiries a reviewer may read, with the conditions added so far (``where``);
    ``newest_first`` is the statement. Events about the authority's children are two
    disjoint halves, each served by its own index: those whose ``authority_id`` is the
    reviewer's (the indexes led by the authority, migration 0012), and the referrals
    that matched entries of several authorities, linked to it in
    ``audit_event_authorities`` (walked by the link rows' own time, migration 0016). Each
    is read newest first and cut at the page, then the two are merged: ``authority_id =
    :a OR id IN (links)`` in one statement, which no index serves, read every event of
    the authority and sorted them for each page. ``links`` are the conditions on the link
    rows (the period, the cursor) that bound the second walk."""

    def __init__(
        self,
        authority_id: uuid.UUID,
        criteria: tuple[ColumnElement[bool], ...] = (),
        children: tuple[ColumnElement[bool], ...] = (),
        links: tuple[ColumnElement[bool], ...] | None = (),
    ) -> None:
        self.authority_id = authority_id
        self.criteria = criteria
        self.children = children
        self.links = links

    def where(
        self, *criteria: ColumnElement[bool], links: tuple[ColumnElement[bool], ...] = ()
    ) -> "Enquiries":
        """Narrowed by ``criteria`` on the events, and ``links``, the same conditions on
        the link rows' copies of the columns. Once a criterion has none (one child's
        identifiers, read by ``about_one_child``), ``links`` is None."""
        mirrored = None if self.links is None or (criteria and not links) else self.links + links
        return Enquiries(self.authority_id, self.criteria + criteria, self.children, mirrored)

    def about_one_child(self, *found_by: ColumnElement[bool]) -> "Enquiries":
        """The enquiries are about one child: each meets one of ``found_by`` (an entry,
        an NHS number asked), each served by an index of its own, which ``halves`` walks
        newest first: the planners otherwise walked every one of the authority's (or, on
        SQLite, the whole NHS-number index, its OR of two indexes never split). Once
        found by something, these narrow it."""
        if self.children:  # already found by something: these narrow it
            return self.where(or_(*found_by))
        return Enquiries(self.authority_id, self.criteria, found_by, None)

    def halves(self, limit: int | None = None) -> list[Select[Any]]:
        """The halves, each selecting the event's columns and the enquiring
        organisation's name, in the same order, newest first: one when the enquiries
        are about one child (found by its indexes, then checked to be the authority's or
        linked to it), else the authority's own and its linked ones; each at most
        ``limit``."""
        events = AuditEvent.__table__
        # A literal, so that the partial indexes serve it in a prepared statement's
        # generic plan too.
        lookups = AuditEvent.event_type == literal_column("'lookup'")
        ours = AuditEvent.authority_id == self.authority_id
        link = AuditEventAuthority.__table__.c
        if self.children:
            # One walk per way of finding the child, newest first from its own index
            # (the key, then the time as IndexTime, then the id: migration 0018), each
            # checked as it goes and cut at the page; an enquiry two walks find is kept
            # once (``_merged``). Reading every enquiry about the child by primary key,
            # then sorting them, cost 4,685 buffers a page for a child asked about 1,100
            # times (issue 18).
            linked_to_us = (
                select(link.event_id)
                .where(link.authority_id == self.authority_id, link.event_id == events.c.id)
                .exists()
            )
            concerned = or_(ours, linked_to_us)
            return [
                select(*events.c, Organisation.name.label("organisation_name"))
                .outerjoin(Organisation, Organisation.id == AuditEvent.organisation_id)
                .where(lookups, found, concerned, *self.criteria)
                .order_by(_time(AuditEvent.occurred_at).desc(), AuditEvent.id.desc())
                .limit(limit)
                for found in self.children
            ]
        own = (
            select(*events.c, Organisation.name.label("organisation_name"))
            .outerjoin(Organisation, Organisation.id == AuditEvent.organisation_id)
            .where(lookups, ours, *self.criteria)
            .order_by(_time(AuditEvent.occurred_at).desc(), AuditEvent.id.desc())
            .limit(limit)
        )
        # Walked newest first from the link rows' index, filtered on the link rows'
        # own copies of the event's columns and cut at the page, then those events read
        # by primary key (as a join, PostgreSQL without statistics drove it from the
        # national index of an enquirer's lookups). A link row is written only for a
        # lookup with no single authority, so ``not_ours`` holds for each.
        if self.links is None:
            raise ValueError("a condition the link rows cannot hold must be about one child")
        not_ours = or_(
            AuditEvent.authority_id.is_(None), AuditEvent.authority_id != self.authority_id
        )
        conditions = [lookups, not_ours, *self.criteria]
        walk = (
            select(link.event_id)
            .where(link.authority_id == self.authority_id, *self.links)
            .order_by(link.occurred_at.desc(), link.event_id.desc())
            .limit(limit)
        )
        linked = self._fenced(_AnyOf(events.c.id, walk), conditions)
        return [own, linked]

    @staticmethod
    def _fenced(found: ColumnElement[bool], conditions: list[ColumnElement[bool]]) -> Select[Any]:
        """The events ``found`` by primary key alone, behind a fence (OFFSET 0) that
        keeps any planner from combining that read with another index, then the
        ``conditions`` on them."""
        events = AuditEvent.__table__
        fenced = select(*events.c).where(found).offset(0).subquery()
        adapter = ClauseAdapter(fenced)
        return (
            select(*fenced.c, Organisation.name.label("organisation_name"))
            .outerjoin(Organisation, Organisation.id == fenced.c.organisation_id)
            .where(*(adapter.traverse(condition) for condition in conditions))
        )

    def _merged(self, limit: int | None) -> Any:
        """Each half cut at the page, then merged."""
        halves = self.halves(limit)
        # Each a subquery: SQLite takes no ORDER BY or LIMIT on a compound's members.
        merged = union_all(*(select(half.subquery()) for half in halves)).subquery("readable")
        if len(self.children) < 2:
            return merged
        # The walks about one child may each find an enquiry (asked with the number and
        # answered with the entry): once each. The newest ``limit`` of their union are
        # among each walk's newest ``limit``, so the page is exact. (Telling each walk
        # to leave out what another finds made it read every enquiry about the child to
        # check it.)
        nth = func.row_number().over(partition_by=merged.c.id).label("nth")
        walked = select(merged, nth).subquery("walked")
        columns = [column for column in walked.c if column.name != "nth"]
        return select(*columns).where(walked.c.nth == 1).subquery("readable")

    def newest_first(self, limit: int | None = None) -> Select[AuditEvent, str | None]:
        """The enquiries newest first, at most ``limit`` of them, as events."""
        merged = self._merged(limit)
        event = aliased(AuditEvent, merged, adapt_on_names=True)
        statement = select(event, merged.c.organisation_name).order_by(
            merged.c.occurred_at.desc(), merged.c.id.desc()
        )
        return statement if limit is None else statement.limit(limit)

    def newest_first_rows(self) -> Select[Any]:
        """All of them newest first, as the export's columns (``csv_row``): the events'
        plain columns, the organisation's name, and the text fields of the enquirer, the
        identifiers asked and what was disclosed, read by the database rather than
        deserialised by the driver. Each document is parsed once (``ParsedJson``) behind
        a fence (OFFSET 0) that keeps it one parse, then its fields read: on PostgreSQL
        ``->>`` on the stored text parsed it again for each, 3 of the 12 ms of a day of a
        large authority's enquiries."""
        merged = self._merged(None)
        c = merged.c
        documents = (
            select(
                *(c[name] for name in _EXPORTED_COLUMNS),
                *(ParsedJson(c[column]).label(column) for column in _EXPORTED_FIELDS),
            )
            .offset(0)
            .subquery("exported")
        )
        d = documents.c
        fields = [
            JsonText(d[column], key).label(f"{column}_{key}")
            for column, keys in _EXPORTED_FIELDS.items()
            for key in keys
        ]
        return select(*(d[name] for name in _EXPORTED_COLUMNS), *fields).order_by(
            d.occurred_at.desc(), d.id.desc()
        )


def readable_enquiries(reviewer: Principal) -> Enquiries:
    """Enquiries about the reviewer's own authority's children, with the enquiring
    organisation's name. Every read in this module starts here."""
    return Enquiries(reviewer.organisation_id)


def concerns(
    authority_id: uuid.UUID,
    start: datetime,
    end: datetime,
    conditions: Sequence[ColumnElement[bool]],
) -> ColumnElement[bool]:
    """Events about one of the authority's children meeting ``conditions`` (which hold a
    window ``(start, end]``), including answers that matched entries of several
    authorities (``AuditEventAuthority``, walked by its time), as one condition for the
    alerts' scans. The ids are found first, the authority's from an index led by it and
    the linked ones from the link rows', then read by primary key: as ``authority_id =
    :a OR id IN (links)`` PostgreSQL read the window from a volume limit's index of every
    lookup instead. (The reviews' reads use Enquiries' two halves.)"""
    link = AuditEventAuthority.__table__.c
    ours = select(AuditEvent.id).where(*conditions, AuditEvent.authority_id == authority_id)
    linked = select(link.event_id).where(
        link.authority_id == authority_id, link.occurred_at > start, link.occurred_at <= end
    )
    return _AnyOf(AuditEvent.id.expression, union(ours, linked))


def asked_with_nhs_number(nhs_number: str) -> ColumnElement[bool]:
    """The enquirer sent this NHS number: the expression ix_audit_events_lookups_asked_
    nhs_number_index_time is led by (migrations 0012 and 0018), on both databases."""
    return AskedNhsNumber(AuditEvent.__table__.c.query) == nhs_number


async def numbered(
    session: AsyncSession, reviewer: Principal, nhs_number: str | None
) -> list[uuid.UUID]:
    """The reviewer's own entries for the child with that NHS number (none without
    one), to find the enquiries answered with them by each one's index (``filtered``)."""
    if nhs_number is None:
        return []
    entries = only(own_entries(reviewer), RegisterEntry.id).where(
        RegisterEntry.subject_nhs_number == nhs_number
    )
    return list((await session.scalars(entries.order_by(RegisterEntry.id))).all())


def filtered(
    statement: Enquiries,
    filters: EnquiryFilters,
    reviewer: Principal,
    nhs_number: str | None = None,
    entries: Sequence[uuid.UUID] = (),
) -> Enquiries:
    if filters.entry_id is not None:
        statement = statement.about_one_child(AuditEvent.entry_id == filters.entry_id)
    if nhs_number is not None:
        # Asked with that number, or answered with one of our entries for that child
        # (``entries``: an enquiry by names and date of birth carries no NHS number).
        asked = asked_with_nhs_number(nhs_number)
        answered = [AuditEvent.entry_id == entry_id for entry_id in entries]
        statement = statement.about_one_child(asked, *answered)
    link = AuditEventAuthority.__table__.c
    if filters.enquirer_id is not None:
        statement = statement.where(
            AuditEvent.enquirer_id == filters.enquirer_id,
            links=(link.enquirer_id == filters.enquirer_id,),
        )
    if filters.organisation_id is not None:
        statement = statement.where(
            AuditEvent.organisation_id == filters.organisation_id,
            links=(link.organisation_id == filters.organisation_id,),
        )
    if filters.purpose is not None:
        statement = statement.where(
            AuditEvent.purpose == filters.purpose.value,
            links=(link.purpose == filters.purpose.value,),
        )
    if filters.outcome is not None:
        # Never NULL, so the same condition; but one the partial index of referrals
        # (a national index of every referral, for the volume limits) cannot serve, which
        # PostgreSQL read whole, sorting every referral in the log, rather than walk the
        # authority's index for a page of them (42,000 buffers at 2 million events).
        outcome = func.coalesce(AuditEvent.outcome, literal_column("''"))
        # Every linked event is a referral.
        referrals = true() if filters.outcome is Outcome.refer_to_custodian else false()
        statement = statement.where(outcome == filters.outcome.value, links=(referrals,))
    at = _time(AuditEvent.occurred_at)
    linked_at = link.occurred_at
    if filters.occurred_from is not None:
        start = literal(filters.occurred_from, AuditEvent.occurred_at.type)
        statement = statement.where(at >= _time(start), links=(linked_at >= start,))
    if filters.occurred_to is not None:
        end = literal(filters.occurred_to, AuditEvent.occurred_at.type)
        statement = statement.where(at < _time(end), links=(linked_at < end,))
    return statement


def matched_entry_ids(event: AuditEvent, authority_id: uuid.UUID) -> list[uuid.UUID]:
    """The entries of one authority that the identifiers matched (never another's)."""
    return _matched(event.detail, authority_id)


def _matched(detail: dict[str, Any] | None, authority_id: uuid.UUID) -> list[uuid.UUID]:
    matched = (detail or {}).get("matched", [])
    return sorted(
        uuid.UUID(m["entry_id"]) for m in matched if m.get("authority_id") == str(authority_id)
    )


def event_read(
    event: AuditEvent, organisation_name: str | None, authority_id: uuid.UUID
) -> AuditEventRead:
    return AuditEventRead(
        id=event.id,
        occurred_at=event.occurred_at,
        organisation_id=event.organisation_id,
        organisation_name=organisation_name,
        enquirer=EnquirerRead.model_validate(event.enquirer) if event.enquirer else None,
        purpose=event.purpose,
        reason=event.reason,
        identifiers=IdentifiersRead.model_validate(event.query) if event.query else None,
        outcome=event.outcome,
        disclosed=DisclosedRead.model_validate(event.disclosed) if event.disclosed else None,
        entry_id=event.entry_id,
        entry_version=event.entry_version,
        matched_entry_ids=matched_entry_ids(event, authority_id),
    )


async def begin_read_only(session: AsyncSession) -> None:
    """End the request's transaction (on SQLite it holds the write lock that every
    lookup needs) and read in one that blocks no writer."""
    await session.commit()
    await session.connection(execution_options={READ_ONLY_OPTION: True})


async def page_of(
    session: AsyncSession,
    request: Request,
    reviewer: Principal,
    statement: Enquiries,
    page: EnquiryListQuery | EnquirySearch | PageQuery,
    nhs_number: str | None = None,
) -> AuditEventPage:
    """One page of enquiries, the read itself on record first: who looked at whom
    is as much the log's business as who asked."""
    cursor, limit = page.cursor, page.limit
    if cursor is not None:
        statement = _older_than(statement, cursor)
    filters = page.model_dump(mode="json", by_alias=True, exclude_none=True)
    filters.pop("nhs_number", None)
    session.add(
        authority_event(
            request,
            reviewer,
            "audit.read",
            query={"nhs_number": nhs_number} if nhs_number else None,
            detail={"path": request.url.path, "filters": filters},
        )
    )
    await commit_or_fail_closed(session)
    await session.connection(execution_options={READ_ONLY_OPTION: True})
    rows = (await session.execute(statement.newest_first(limit + 1))).all()
    items = [event_read(event, name, reviewer.organisation_id) for event, name in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1][0]
        next_cursor = encode_cursor(last.occurred_at.isoformat(), str(last.id))
    return AuditEventPage(items=items, next_cursor=next_cursor)


CSV_COLUMNS = (
    "event_id",
    "occurred_at",
    "organisation_id",
    "organisation_name",
    "enquirer_id",
    "enquirer_name",
    "enquirer_role",
    "purpose",
    "reason",
    "nhs_number",
    "given_name",
    "family_name",
    "date_of_birth",
    "outcome",
    "disclosed_status",
    "disclosed_categories",
    "disclosed_unborn",
    "entry_id",
    "entry_version",
    "matched_entry_ids",
)


# The columns the export reads as they are, in ``csv_row``'s order, and the text fields it
# reads from the events' JSON columns, in the database.
_EXPORTED_COLUMNS = (
    "id",
    "occurred_at",
    "organisation_id",
    "organisation_name",
    "purpose",
    "reason",
    "outcome",
    "entry_id",
    "entry_version",
    "detail",
)
_EXPORTED_FIELDS = {
    "enquirer": ("id", "name", "role"),
    "query": ("nhs_number", "given_name", "family_name", "date_of_birth"),
    "disclosed": ("status", "categories", "unborn"),
}
# ``unborn`` as the database gives a JSON boolean's text: PostgreSQL's ``->>`` spells it,
# SQLite's ``json_extract`` gives 1 or 0; the export's cell as before, Python's spelling.
_UNBORN = {"true": "True", "false": "False", 1: "True", 0: "False"}


def csv_row(row: Any, authority_id: uuid.UUID) -> list[str]:
    """One enquiry as the export's cells, from ``newest_first_rows``: the fields of
    ``AuditEventRead`` (``event_read``), flattened, and no others. Read straight from
    the row, without the ORM's objects, the response models or parsing the enquirer and
    the identifiers, which cost some 100 µs a row: a day of a large authority's
    enquiries is thousands of rows. What was disclosed is read as text fields too (the
    categories' list parsed only where there is one). The row is unpacked by position
    (its columns in ``newest_first_rows``' order) and only text is passed through
    ``safe_cell``: ids, times and numbers are ours and cannot start a formula."""
    (
        event_id,
        occurred_at,
        organisation_id,
        organisation_name,
        purpose,
        reason,
        outcome,
        entry_id,
        entry_version,
        detail,
        enquirer_id,
        enquirer_name,
        enquirer_role,
        nhs_number,
        given_name,
        family_name,
        date_of_birth,
        status,
        categories,
        unborn,
    ) = row
    return [
        str(event_id),
        occurred_at.isoformat(),
        "" if organisation_id is None else str(organisation_id),
        safe_cell(organisation_name),
        safe_cell(enquirer_id),
        safe_cell(enquirer_name),
        safe_cell(enquirer_role),
        safe_cell(purpose),
        safe_cell(reason),
        safe_cell(nhs_number),
        safe_cell(given_name),
        safe_cell(family_name),
        safe_cell(date_of_birth),
        safe_cell(outcome),
        safe_cell(status),
        safe_cell(";".join(json.loads(categories))) if categories else "",
        _UNBORN.get(unborn, ""),
        "" if entry_id is None else str(entry_id),
        "" if entry_version is None else str(entry_version),
        ";".join(str(matched) for matched in _matched(detail, authority_id)),
    ]


async def _csv(
    sessionmaker: async_sessionmaker[AsyncSession],
    statement: Enquiries,
    authority_id: uuid.UUID,
) -> AsyncIterator[str]:
    """Rows fetched and sent a chunk at a time: an export of years of enquiries
    never sits in memory whole."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def drain() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    writer.writerow(CSV_COLUMNS)
    yield drain()
    async with sessionmaker() as session:
        # The rows as the driver gives them (Core), not through the ORM's loading.
        connection = await session.connection(execution_options={READ_ONLY_OPTION: True})
        result = await connection.stream(
            statement.newest_first_rows().execution_options(yield_per=EXPORT_CHUNK)
        )
        async for rows in result.partitions():
            writer.writerows(csv_row(row, authority_id) for row in rows)
            yield drain()


class OrganisationContact(BaseModel):
    """An enquiring organisation and whom there to call about its enquiries."""

    id: uuid.UUID
    name: str
    contact_name: str
    contact_phone: str


async def enquiring_organisations(session: AsyncSession) -> list[OrganisationContact]:
    """Every organisation that may look children up, by name: what a custodian may filter
    the enquiries by, and whom to call about them. No child is named."""
    rows = await session.scalars(
        select(Organisation)
        .where(Organisation.kind.in_(sorted(kind.value for kind in REFERENCE_POINT_KINDS)))
        .order_by(Organisation.name)
    )
    return [
        OrganisationContact(
            id=row.id, name=row.name, contact_name=row.contact_name, contact_phone=row.contact_phone
        )
        for row in rows
    ]


def child_named(entry: RegisterEntry) -> str:
    """How an entry names its child: names and date of birth, or, for an unborn baby,
    the mother's."""
    if entry.unborn:
        names = (entry.mother_given_name, entry.mother_family_name)
        born = entry.mother_date_of_birth
        prefix = "Unborn baby of "
    else:
        names = (entry.child_given_name, entry.child_family_name)
        born = entry.child_date_of_birth
        prefix = ""
    named = " ".join(name for name in names if name) or "(no name recorded)"
    return f"{prefix}{named}" + (f", born {born:%d/%m/%Y}" if born else "")


async def children_named(
    session: AsyncSession, reviewer: Principal, entry_ids: set[uuid.UUID]
) -> dict[uuid.UUID, str]:
    """The child of each of ``entry_ids`` that is the reviewer's own authority's entry
    (another authority's entry is never read, so never named)."""
    if not entry_ids:
        return {}
    rows = await session.scalars(own_entries(reviewer).where(RegisterEntry.id.in_(entry_ids)))
    return {row.id: child_named(row) for row in rows}


async def list_page(
    session: AsyncSession, request: Request, reviewer: Principal, query: EnquiryListQuery
) -> AuditEventPage:
    statement = filtered(readable_enquiries(reviewer), query, reviewer)
    return await page_of(session, request, reviewer, statement, query)


async def search_page(
    session: AsyncSession, request: Request, reviewer: Principal, search: EnquirySearch
) -> AuditEventPage:
    nhs_number = search.nhs_number
    entries = await numbered(session, reviewer, nhs_number)
    statement = filtered(readable_enquiries(reviewer), search, reviewer, nhs_number, entries)
    return await page_of(session, request, reviewer, statement, search, nhs_number)


async def entry_page(
    session: AsyncSession,
    request: Request,
    reviewer: Principal,
    entry_id: uuid.UUID,
    page: PageQuery,
) -> AuditEventPage:
    """Who has asked about one of the custodian's children: the entry through the
    register's own loader (another authority's, or none, is 404 ``audit.refused``)."""
    found = await load_entry(
        session,
        request,
        reviewer,
        entry_id,
        event_type="audit.refused",
        message="No entry with that id in your authority's register.",
    )
    found_by: list[ColumnElement[bool]] = [AuditEvent.entry_id == entry_id]
    if found.subject_nhs_number is not None:
        # Also the enquiries with the child's number that a custodian had to resolve.
        found_by.append(asked_with_nhs_number(found.subject_nhs_number))
    statement = readable_enquiries(reviewer).about_one_child(*found_by)
    return await page_of(session, request, reviewer, statement, page)


async def export_csv(
    session: AsyncSession, request: Request, reviewer: Principal, export: EnquiryExport
) -> tuple[AsyncIterator[str], str]:
    """The CSV's chunks and its file name, the export on record before its first byte
    leaves (fail closed)."""
    filters = export.model_dump(mode="json", by_alias=True, exclude_none=True)
    nhs_number = filters.pop("nhs_number", None)
    # Before the commit, which ends this read too: the request's session is closed only
    # once the CSV has been sent, and on SQLite an open transaction holds the write lock
    # that every lookup needs.
    entries = await numbered(session, reviewer, nhs_number)
    session.add(
        authority_event(
            request,
            reviewer,
            "audit.exported",
            outcome="exported",
            query={"nhs_number": nhs_number} if nhs_number else None,
            detail={"filters": filters},
        )
    )
    await commit_or_fail_closed(session)
    statement = filtered(readable_enquiries(reviewer), export, reviewer, nhs_number, entries)
    filename = f"enquiries-{utcnow():%Y%m%dT%H%M%SZ}.csv"
    chunks = _csv(request.app.state.sessionmaker, statement, reviewer.organisation_id)
    return chunks, filename
