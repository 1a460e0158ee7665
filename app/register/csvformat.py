"""The register's CSV files: what an import may hold, and what an export gives.

Parsing checks every row against the same schema and rules as the API and
reports every problem by row number (the header is row 1, as a spreadsheet
shows it) and column, never repeating a value.
"""

import csv
import io
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any

from pydantic import TypeAdapter, ValidationError

from app.register.models import Category
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
DATE_COLUMNS = (
    "child_date_of_birth",
    "mother_date_of_birth",
    "expected_delivery_date",
    "plan_start",
    "next_review",
    "last_review",
)
# Spreadsheets in the UK show and save dates as DD/MM/YYYY; the API's own form is ISO.
_UK_DATE = re.compile(r"([0-9]{1,2})/([0-9]{1,2})/([0-9]{4})")
_ISO_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
DATE_FORMATS = "DD/MM/YYYY (e.g. 25/12/2020) or YYYY-MM-DD (e.g. 2020-12-25)"
# A category as a custodian writes it: the code, or its words in any case.
CATEGORY_WORDS = {
    **{category.value: category.value for category in Category},
    **{category.value.replace("_", " "): category.value for category in Category},
}
ACCEPTED_CATEGORIES = ", ".join(category.value.replace("_", " ") for category in Category)
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


def plural(count: int, noun: str) -> str:
    """``1 problem``, ``2 problems``, ``1 entry``, ``3 entries``."""
    if count == 1:
        return f"1 {noun}"
    return f"{count} {noun[:-1] + 'ies' if noun.endswith('y') else noun + 's'}"


def iso_date(text: str) -> str | None:
    """A cell's date (DD/MM/YYYY or YYYY-MM-DD) as YYYY-MM-DD, or None if it is not one.
    The register's window (``plausible_date``) is the schema's to check."""
    if uk := _UK_DATE.fullmatch(text):
        day, month, year = (int(part) for part in uk.groups())
    elif iso := _ISO_DATE.fullmatch(text):
        year, month, day = (int(part) for part in iso.groups())
    else:
        return None
    try:
        return date(year, month, day).isoformat()
    except ValueError:
        return None


def category_code(text: str) -> str | None:
    """``Neglect``, ``EMOTIONAL ABUSE``, ``physical-abuse`` → the category's code."""
    words = " ".join(text.replace("_", " ").replace("-", " ").lower().split())
    return CATEGORY_WORDS.get(words)


# Each field of an entry on its own, so that a row with a wrong cell still has its
# other cells checked against the rules between fields.
_FIELDS = {
    name: TypeAdapter(info.rebuild_annotation()) for name, info in EntryCreate.model_fields.items()
}


def _parse_row(
    number: int, cells: dict[str, str], today: date
) -> tuple[ParsedRow | None, list[RowProblem]]:
    """The row's entry, or every problem with it: cells that are not dates or categories,
    cells the schema refuses, and the rules between the cells that are right."""
    value = {name: text.strip() or None for name, text in cells.items()}
    found: list[RowProblem] = []
    for column in DATE_COLUMNS:
        text = value.get(column)
        if text is not None:
            value[column] = iso_date(text)
            if value[column] is None:
                found.append(RowProblem(number, column, f"not a date: give {DATE_FORMATS}"))

    categories: list[str] = []
    for word in (value.get("categories") or "").split(CATEGORY_SEPARATOR):
        if not word.strip():
            continue
        code = category_code(word)
        if code is None and not any(problem.column == "categories" for problem in found):
            found.append(
                RowProblem(
                    number,
                    "categories",
                    f"not a category: give one or more of {ACCEPTED_CATEGORIES}, "
                    f"separated by {CATEGORY_SEPARATOR}",
                )
            )
        elif code is not None and code not in categories:
            categories.append(code)

    def person(prefix: str) -> dict[str, Any] | None:
        fields = {field: value.get(f"{prefix}_{field}") for field in PERSON_FIELDS}
        return (
            fields
            if any(cells.get(f"{prefix}_{field}", "").strip() for field in PERSON_FIELDS)
            else None
        )

    raw = {
        "child": person("child"),
        "mother": person("mother"),
        "expected_delivery_date": value.get("expected_delivery_date"),
        "categories": categories,
        "plan_start": value.get("plan_start"),
        "next_review": value.get("next_review"),
        "last_review": value.get("last_review"),
        "lead_professional": value.get("lead_professional"),
        "team_contact": value.get("team_contact"),
        "notes": value.get("notes"),
    }
    reported = {problem.column for problem in found}

    def new(problems: Iterable[RowProblem]) -> list[RowProblem]:
        fresh = [problem for problem in problems if problem.column not in reported]
        reported.update(problem.column for problem in fresh)
        return fresh

    try:
        data = EntryCreate.model_validate(raw)
    except ValidationError as exc:
        found += new(
            RowProblem(number, column_of(error["loc"]), _message(error, value))
            for error in exc.errors(include_input=False, include_url=False)
        )
        found += new(_rules_of_the_rest(number, raw, today))
        return None, found
    found += new(
        RowProblem(number, column_of(problem.loc), problem.msg)
        for problem in entry_problems(data, today)
    )
    return (None if found else ParsedRow(number, data)), found


def _rules_of_the_rest(number: int, raw: dict[str, Any], today: date) -> list[RowProblem]:
    """The rules between the fields that are valid on their own, when others are not; a
    rule that needs a field that is wrong is not checked (its problem is reported)."""
    valid: dict[str, Any] = {}
    for name, adapter in _FIELDS.items():
        try:
            valid[name] = adapter.validate_python(raw.get(name))
        except ValidationError:
            valid[name] = None
    try:
        problems = entry_problems(EntryCreate.model_construct(**valid), today)
    except (AttributeError, TypeError):
        return []
    return [RowProblem(number, column_of(problem.loc), problem.msg) for problem in problems]


def column_of(loc: Iterable[str | int]) -> str:
    """("child", "given_name") → child_given_name; ("categories", 0) → categories."""
    names = [part for part in loc if isinstance(part, str)]
    return "_".join(names) if names else "child"


def _message(error: Any, value: dict[str, str | None]) -> str:
    column = column_of(error["loc"])
    empty = {"missing", "string_type", "date_type", "too_short"}
    if error["type"] in empty and value.get(column) is None:
        return "this cell is empty and is needed"
    message: str = error["msg"]
    return message.removeprefix("Value error, ")
