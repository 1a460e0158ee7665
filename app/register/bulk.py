"""Bulk import of a register file: all rows or none, each a version like any other create.

Rows go in with executemany in chunks; the file as a whole is one audit event
(each entry's version row names the import), so a 50,000-row file does not
put 50,000 events in front of the sequencer.
"""

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.principals import Principal
from app.db import utcnow
from app.register.csvformat import ParsedRow, RowProblem
from app.register.models import RegisterEntry, RegisterEntryVersion
from app.register.queries import live, only, own_entries
from app.register.service import Actor, snapshot_of

CHUNK = 2_000


@dataclass
class LiveIndex:
    """Live plans by person presenting, with the rule of ``service.same_child``:
    the same NHS number, or the same names and date of birth unless both have
    NHS numbers that differ."""

    by_nhs: dict[tuple[bool, str], str] = field(default_factory=dict)
    by_key: dict[tuple[bool, str], list[tuple[str | None, str]]] = field(default_factory=dict)

    def add(self, unborn: bool, nhs: str | None, key: str, ref: str) -> None:
        if nhs is not None:
            self.by_nhs[unborn, nhs] = ref
        self.by_key.setdefault((unborn, key), []).append((nhs, ref))

    def find(self, unborn: bool, nhs: str | None, key: str) -> str | None:
        if nhs is not None and (unborn, nhs) in self.by_nhs:
            return self.by_nhs[unborn, nhs]
        for other_nhs, ref in self.by_key.get((unborn, key), ()):
            if nhs is None or other_nhs is None:
                return ref
        return None


async def live_index(session: AsyncSession, custodian: Principal, today: date) -> LiveIndex:
    """The live plans of the custodian's authority."""
    index = LiveIndex()
    rows = await session.execute(
        only(
            own_entries(custodian),
            RegisterEntry.id,
            RegisterEntry.unborn,
            RegisterEntry.subject_nhs_number,
            RegisterEntry.subject_match_key,
        ).where(live(today))
    )
    for entry_id, unborn, nhs, key in rows:
        index.add(unborn, nhs, key, f"an active entry already exists: {entry_id}")
    return index


def duplicate_problems(
    rows: list[ParsedRow], values: list[dict[str, Any]], existing: LiveIndex
) -> list[RowProblem]:
    """Rows for a child already on the register, or twice in the file.
    ``values`` are the rows' :func:`entry_values`, in the same order."""
    in_file = LiveIndex()
    problems = []
    for row, entry in zip(rows, values, strict=True):
        person = (entry["unborn"], entry["subject_nhs_number"], entry["subject_match_key"])
        found = existing.find(*person) or in_file.find(*person)
        if found is not None:
            column = "mother" if row.data.unborn else "child"
            problems.append(RowProblem(row.row, column, f"the same child as {found}"))
        in_file.add(*person, f"row {row.row} of this file")
    return problems


def every_problem(
    rows: list[ParsedRow],
    values: list[dict[str, Any]],
    problems: list[RowProblem],
    existing: LiveIndex,
) -> list[RowProblem]:
    """The rows' own ``problems`` and the duplicates among the valid ``rows``, by row:
    a custodian corrects the whole file in one pass, not one kind of mistake at a time."""
    found = problems + duplicate_problems(rows, values, existing)
    return sorted(found, key=lambda problem: problem.row)


def _chunks(items: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def new_rows(
    values: list[dict[str, Any]], *, authority_id: uuid.UUID, actor: Actor, import_id: uuid.UUID
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The register_entries and register_entry_versions rows of the entries whose
    :func:`entry_values` are ``values``, each at version 1. Built before any lock is
    taken: for a large file it is seconds of work."""
    now = utcnow()
    reason = f"register import {import_id}"
    entries: list[dict[str, Any]] = []
    versions: list[dict[str, Any]] = []
    for fields in values:
        entry = {
            "id": uuid.uuid4(),
            "authority_id": authority_id,
            "version": 1,
            "ended_on": None,
            "end_reason": None,
            "updated_at": now,
            "updated_by": actor.subject,
            **fields,
        }
        entries.append(entry)
        versions.append(
            {
                "entry_id": entry["id"],
                "version": 1,
                "snapshot": snapshot_of(entry),
                "changed_at": now,
                "changed_by": actor.subject,
                "change_reason": reason,
            }
        )
    return entries, versions


async def insert_rows(
    session: AsyncSession, entries: list[dict[str, Any]], versions: list[dict[str, Any]]
) -> None:
    """Insert rows from :func:`new_rows`.

    Core inserts on the tables: one executemany per chunk (the ORM's bulk insert would
    split a chunk wherever the set of null columns changes)."""
    connection = await session.connection()
    for table, rows in (
        (RegisterEntry.__table__, entries),
        (RegisterEntryVersion.__table__, versions),
    ):
        for chunk in _chunks(rows):
            await connection.execute(insert(table), chunk)
