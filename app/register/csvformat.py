"""The register's CSV files: what an import may hold, and what an export gives.

Parsing checks every row against the same schema and rules as the API and
reports every problem by row number (the header is row 1, as a spreadsheet
shows it) and column, never repeating a value.
"""

import csv
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any

from pydantic import ValidationError

from app.register.rules import entry_problems
from app.register.schemas import EntryCreate

PERSON_FIELDS = ("nhs_number", "given_name", "family_name", "date_of_birth")
IMPORT_COLUMNS = (
    *(f"child_{field}" for field in PERSON_FIELDS),
    "expected_delivery_date",
    *(f"mother_{field}" for field in PERSON_FIELDS),
    "categories",
    "plan_start",
    "next_review",
    "last_review",
    "lead_professional",
    "team_contact",
    "notes",
)
REQUIRED_COLUMNS = ("categories", "plan_start")
CATEGORY_SEPARATOR = ";"
# A business-continuity copy for reference points: who is on a plan, under which
# categories, and whom to call. No plan dates, notes or professionals (need to know).
EXPORT_COLUMNS = (
    "entry_id",
    "version",
    "unborn",
    *(f"child_{field}" for field in PERSON_FIELDS),
    "expected_delivery_date",
    *(f"mother_{field}" for field in PERSON_FIELDS),
    "categories",
    "contact_name",
    "contact_phone",
)


@dataclass(frozen=True)
class RowProblem:
    row: int
    column: str
    problem: str

    def as_error(self) -> dict[str, Any]:
        return {"row": self.row, "column": self.column, "problem": self.problem}


@dataclass(frozen=True)
class ParsedRow:
    row: int
    data: EntryCreate


def parse_csv(
    text: str, today: date, *, progress: Callable[[int], None] | None = None
) -> tuple[list[ParsedRow], list[RowProblem]]:
    """Every row that is a valid entry, and every problem found in the others."""
    problems: list[RowProblem] = []
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        return [], [RowProblem(1, "", "the file is empty: the first row must name the columns")]
    except csv.Error as exc:
        return [], [RowProblem(1, "", f"not a CSV file ({exc})")]
    problems += _header_problems(header)
    if problems:
        return [], problems

    rows: list[ParsedRow] = []
    number = 1
    try:
        for number, cells in enumerate(reader, start=2):
            if progress is not None:
                progress(1)
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) != len(header):
                problems.append(
                    RowProblem(number, "", f"{len(cells)} cells where the header has {len(header)}")
                )
                continue
            parsed, found = _parse_row(number, dict(zip(header, cells, strict=True)), today)
            problems += found
            if parsed is not None:
                rows.append(parsed)
    except csv.Error as exc:
        problems.append(RowProblem(number + 1, "", f"not valid CSV ({exc})"))
    if not rows and not problems:
        problems.append(RowProblem(2, "", "the file has a header but no entries"))
    return rows, problems


def _header_problems(header: list[str]) -> list[RowProblem]:
    problems = [
        RowProblem(1, name or f"(column {position})", "unknown column")
        for position, name in enumerate(header, start=1)
        if name not in IMPORT_COLUMNS
    ]
    seen: set[str] = set()
    for name in header:
        if name in seen:
            problems.append(RowProblem(1, name, "column named twice"))
        seen.add(name)
    problems += [
        RowProblem(1, name, "required column missing")
        for name in REQUIRED_COLUMNS
        if name not in header
    ]
    return problems


def _parse_row(
    number: int, cells: dict[str, str], today: date
) -> tuple[ParsedRow | None, list[RowProblem]]:
    value = {name: text.strip() or None for name, text in cells.items()}

    def person(prefix: str) -> dict[str, Any] | None:
        fields = {field: value.get(f"{prefix}_{field}") for field in PERSON_FIELDS}
        return fields if any(fields.values()) else None

    categories = value.get("categories") or ""
    raw = {
        "child": person("child"),
        "mother": person("mother"),
        "expected_delivery_date": value.get("expected_delivery_date"),
        "categories": [c.strip() for c in categories.split(CATEGORY_SEPARATOR) if c.strip()],
        "plan_start": value.get("plan_start"),
        "next_review": value.get("next_review"),
        "last_review": value.get("last_review"),
        "lead_professional": value.get("lead_professional"),
        "team_contact": value.get("team_contact"),
        "notes": value.get("notes"),
    }
    try:
        data = EntryCreate.model_validate(raw)
    except ValidationError as exc:
        return None, [
            RowProblem(number, column_of(error["loc"]), _message(error["msg"]))
            for error in exc.errors(include_input=False, include_url=False)
        ]
    found = [
        RowProblem(number, column_of(problem.loc), problem.msg)
        for problem in entry_problems(data, today)
    ]
    return (None if found else ParsedRow(number, data)), found


def column_of(loc: Iterable[str | int]) -> str:
    """("child", "given_name") → child_given_name; ("categories", 0) → categories."""
    names = [part for part in loc if isinstance(part, str)]
    return "_".join(names) if names else "child"


def _message(msg: str) -> str:
    return msg.removeprefix("Value error, ")
