"""The register's files: a CSV import of new entries (all rows or none, every problem
of every row reported), and the CSV export of live plans that reference points keep as
their continuity copy. Each is one audit event, on record before the answer.
"""

import asyncio
import csv
import hashlib
import io
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date
from typing import Any

from fastapi import Request
from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.service import authority_event, commit_or_fail_closed, refuse
from app.auth.principals import Principal
from app.db import READ_ONLY_OPTION
from app.errors import ProblemError
from app.identity.models import Organisation
from app.register import bulk
from app.register.csvformat import (
    CATEGORY_SEPARATOR,
    EXPORT_COLUMNS,
    ParsedRow,
    RowProblem,
    parse_csv,
    plural,
)
from app.register.models import RegisterEntry
from app.register.queries import count_of, listed
from app.register.schemas import ImportResult
from app.register.service import (
    Actor,
    actor_of,
    entry_values,
    lock_register,
    snapshot,
)
from app.register.writes import save
from app.spreadsheet import safe_cell

MAX_IMPORT_PROBLEMS = 1_000


async def import_file(
    session: AsyncSession, request: Request, custodian: Principal, body: bytes
) -> ImportResult:
    """Import a CSV file of new entries into the custodian's register
    (``register.imported``), or refuse it (422 ``invalid_rows``, every problem by row and
    column; ``register.import_refused``) and import nothing."""
    digest = hashlib.sha256(body).hexdigest()
    import_id = uuid.uuid4()
    today = date.today()
    # The file is read and its rows built in a thread, before any lock: for a large
    # file that is seconds of work, which on the event loop would stall every lookup
    # of this worker, and under the lock every writer (on SQLite, every lookup).
    rows, problems, entries, versions = await asyncio.to_thread(
        _read_import,
        body,
        today,
        authority_id=custodian.organisation_id,
        actor=actor_of(request, custodian),
        import_id=import_id,
    )
    if not problems:
        await lock_register(session, custodian.organisation_id)
    # Refused either way when the rows have problems, so no lock: the duplicates are
    # reported beside them, to be corrected in the same pass.
    existing = await bulk.live_index(session, custodian, today)
    problems = bulk.every_problem(rows, entries, problems, existing)
    detail = {"import_id": str(import_id), "sha256": digest, "rows": len(rows)}
    if problems:
        event = authority_event(
            request,
            custodian,
            "register.import_refused",
            outcome="refused",
            refusal="invalid_rows",
            detail={**detail, "problems": len(problems)},
        )
        shown = problems[:MAX_IMPORT_PROBLEMS]
        more = f" (the first {len(shown)} are listed)" if len(problems) > len(shown) else ""
        await refuse(
            session,
            event,
            ProblemError(
                422,
                "Import refused",
                f"{plural(len(problems), 'problem')}{more}; nothing was imported. "
                "Each error names the row (the header is row 1) and the column.",
                code="invalid_rows",
                errors=[problem.as_error() for problem in shown],
            ),
        )
    await bulk.insert_rows(session, entries, versions)
    session.add(authority_event(request, custodian, "register.imported", detail=detail))
    await save(session)
    return ImportResult(import_id=import_id, imported=len(rows), sha256=digest)


def _read_import(
    body: bytes, today: date, *, authority_id: uuid.UUID, actor: Actor, import_id: uuid.UUID
) -> tuple[list[ParsedRow], list[RowProblem], list[dict[str, Any]], list[dict[str, Any]]]:
    """The file's valid rows, its problems, and the rows to insert (with problems, only
    the valid rows' :func:`entry_values`, to find duplicates among them)."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        return [], [RowProblem(1, "", "the file is not UTF-8 text")], [], []
    rows, problems = parse_csv(text, today)
    values = [entry_values(row.data) for row in rows]
    if problems:
        return rows, problems, values, []
    entries, versions = bulk.new_rows(
        values, authority_id=authority_id, actor=actor, import_id=import_id
    )
    return rows, problems, entries, versions


@dataclass(frozen=True)
class Export:
    """A continuity export on record (``register.exported``), ready to stream."""

    chunks: AsyncIterator[str]
    filename: str
    entries: int


async def export_file(session: AsyncSession, request: Request, custodian: Principal) -> Export:
    """The custodian's live plans as CSV (``EXPORT_COLUMNS``), the export on record
    before its first byte leaves (fail closed)."""
    today = date.today()
    statement = listed(custodian, "active", None, today)
    count = (await session.execute(count_of(statement))).scalar_one()
    authority = await session.get_one(Organisation, custodian.organisation_id)
    contact = (authority.contact_name, authority.contact_phone)
    session.add(authority_event(request, custodian, "register.exported", detail={"entries": count}))
    await commit_or_fail_closed(session)
    chunks = _export_csv(
        request.app.state.sessionmaker, statement.order_by(RegisterEntry.id), contact
    )
    return Export(chunks, f"register-{today.isoformat()}.csv", count)


async def _export_csv(
    sessionmaker: async_sessionmaker[AsyncSession],
    statement: Select[RegisterEntry],
    contact: tuple[str, str],
) -> AsyncIterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(EXPORT_COLUMNS)
    async with sessionmaker() as session:
        await session.connection(execution_options={READ_ONLY_OPTION: True})
        result = await session.stream_scalars(statement.execution_options(yield_per=1_000))
        async for entries in result.partitions():
            for entry in entries:
                values = {
                    **snapshot(entry),
                    "entry_id": entry.id,
                    "categories": CATEGORY_SEPARATOR.join(entry.categories),
                    "contact_name": contact[0],
                    "contact_phone": contact[1],
                }
                writer.writerow([safe_cell(values[column]) for column in EXPORT_COLUMNS])
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue()
