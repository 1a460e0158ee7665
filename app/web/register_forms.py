"""The register pages' forms (app/web/register_routes.py): what each field is called, how
what was typed becomes the API's body (dates DD/MM/YYYY or YYYY-MM-DD), and how a
refusal becomes an error beside each field in plain words, never repeating a value.
"""

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData

from app.errors import ProblemError
from app.register.csvformat import PERSON_FIELDS, column_of, iso_date
from app.register.schemas import (
    BirthRecord,
    EntryEnd,
    EntryRead,
    ReviewRecord,
    VersionRead,
)
from app.web.pages import CATEGORIES, uk_date

M = TypeVar("M", bound=BaseModel)


PEOPLE = {"child": "Child's", "mother": "Mother's"}


PERSON_WORDS = {
    "nhs_number": "NHS number (optional)",
    "given_name": "given name",
    "family_name": "family name",
    "date_of_birth": "date of birth",
}


LABELS = {
    **{
        f"{prefix}_{field}": f"{whose} {PERSON_WORDS[field]}"
        for prefix, whose in PEOPLE.items()
        for field in PERSON_FIELDS
    },
    "expected_delivery_date": "Expected delivery date",
    "categories": "Categories",
    "plan_start": "Plan start (initial child protection conference)",
    "next_review": "Next review (optional)",
    "last_review": "Last review held (optional, for a plan already running)",
    "lead_professional": "Lead professional (optional)",
    "team_contact": "Team contact (optional)",
    "notes": "Notes (optional, never shown to reference points)",
    "reason": "Reason for the change",
    "held_on": "Review held on",
    "note": "Note (optional)",
    "ended_on": "Plan ended on",
    "end_reason": "Grounds for ending the plan",
    "nhs_number": "NHS number",
    "given_name": "Given name",
    "family_name": "Family name",
    "date_of_birth": "Date of birth",
    "file": "CSV file",
}


DATE_HELP = "Enter a real date as DD/MM/YYYY, for example 25/12/2020."


DATE_FIELDS = frozenset(
    {
        *(f"{prefix}_date_of_birth" for prefix in PEOPLE),
        "date_of_birth",
        "expected_delivery_date",
        "plan_start",
        "next_review",
        "last_review",
        "held_on",
        "ended_on",
    }
)


ENTRY_FIELDS = (
    *(f"{prefix}_{field}" for prefix in PEOPLE for field in PERSON_FIELDS),
    "expected_delivery_date",
    "plan_start",
    "next_review",
    "last_review",
    "lead_professional",
    "team_contact",
    "notes",
)


# The fields in the order the pages show them (a person: names, date of birth, NHS number).
_PERSON_ORDER = ("given_name", "family_name", "date_of_birth", "nhs_number")


FORM_ORDER = (
    *(f"{prefix}_{field}" for prefix in PEOPLE for field in _PERSON_ORDER),
    "expected_delivery_date",
    "categories",
    "plan_start",
    "next_review",
    "last_review",
    "lead_professional",
    "team_contact",
    "notes",
    "reason",
    "held_on",
    "end_reason",
    "ended_on",
    "note",
    "nhs_number",
    "given_name",
    "family_name",
    "date_of_birth",
    "file",
)


CHANGE_FIELDS = (*(f for f in ENTRY_FIELDS if f != "last_review"), "reason")


# What a version changed, in words, for the history.
CHANGED_WORDS = {
    "child": "child's details",
    "mother": "mother's details",
    "expected_delivery_date": "expected delivery date",
    "categories": "categories",
    "plan_start": "plan start",
    "next_review": "next review",
    "last_review": "last review",
    "lead_professional": "lead professional",
    "team_contact": "team contact",
    "notes": "notes",
    "ended_on": "end date",
    "end_reason": "grounds for ending",
}


def in_form_order(errors: dict[str, str]) -> dict[str, str]:
    """The errors in the order of the fields on the page, for the summary at the top."""
    return dict(
        sorted(
            errors.items(),
            key=lambda item: FORM_ORDER.index(item[0]) if item[0] in FORM_ORDER else 0,
        )
    )


def typed_values(form: FormData, fields: tuple[str, ...]) -> dict[str, Any]:
    """What was typed, as typed (trimmed): shown back in the form, never stored."""
    typed: dict[str, Any] = {field: str(form.get(field) or "").strip() for field in fields}
    typed["categories"] = [str(value) for value in form.getlist("categories")]
    return typed


def parsed_date(typed: dict[str, Any], field: str, errors: dict[str, str]) -> str | None:
    text = typed.get(field) or ""
    if not text:
        return None
    value = iso_date(text)
    if value is None:
        errors.setdefault(field, f"This is not a date. {DATE_HELP}")
    return value


def person_values(
    typed: dict[str, Any], prefix: str, errors: dict[str, str], *, always: bool = False
) -> dict[str, Any] | None:
    """A person's fields, or None when none was filled in (unless ``always``)."""
    names = {field: f"{prefix}{field}" for field in PERSON_FIELDS}
    if not always and not any(typed.get(name) for name in names.values()):
        return None
    return {
        "nhs_number": typed.get(names["nhs_number"]) or None,
        "given_name": typed.get(names["given_name"]) or None,
        "family_name": typed.get(names["family_name"]) or None,
        "date_of_birth": parsed_date(typed, names["date_of_birth"], errors),
    }


def _plain(error: dict[str, Any], field: str) -> str:
    """A validation error in plain words: what is wrong, and what to enter."""
    kind, message = str(error.get("type", "")), str(error.get("msg", ""))
    empty = "input" in error and error["input"] is None  # left empty (never shown back)
    if (
        empty
        or kind in ("missing", "string_type", "date_type", "none_required")
        or (kind == "too_short" and field != "categories")
    ):
        return "This is needed." + (f" {DATE_HELP}" if field in DATE_FIELDS else "")
    if field == "categories":
        return "Choose at least one category."
    if kind == "enum":
        return "Choose one of the options offered."
    if kind == "string_too_long":
        limit = (error.get("ctx") or {}).get("max_length")
        return f"This is too long: at most {limit} characters." if limit else "This is too long."
    if kind == "string_too_short":
        return "This is too short: say it in a few words."
    message = message.removeprefix("Value error, ").strip()
    if message.startswith("must be a date from"):
        return "This date cannot be right: give a date from 1900 onwards, at most 5 years ahead."
    return f"{message[:1].upper()}{message[1:]}." if message else "This was not accepted."


def _field_of(loc: list[Any] | tuple[Any, ...], default: str) -> str:
    parts = [part for part in loc if part != "body"]
    return column_of(parts) if parts else default


def validated(
    model: type[M], raw: dict[str, Any], errors: dict[str, str], *, whole: str
) -> M | None:
    """``raw`` as ``model``, or None with each error beside its field (``whole``: the
    field an error about the form as a whole is shown beside)."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        # The inputs only to tell an empty field; no value is ever shown back in a message.
        for error in exc.errors(include_url=False):
            field = _field_of(error["loc"], whole)
            errors.setdefault(field, _plain(dict(error), field))
        return None


def refusal(problem: ProblemError, whole: str) -> tuple[dict[str, str], dict[str, Any]]:
    """A write's refusal: its errors beside their fields, and the page's error summary."""
    if problem.status >= 500 or problem.status in (401, 403):
        raise problem
    errors: dict[str, str] = {}
    for error in problem.errors or ():
        loc = error.get("loc") or []
        if not loc:
            continue
        field = _field_of(loc, whole)
        errors.setdefault(field, _plain(error, field))
    summary: dict[str, Any] = {"title": "Check the details", "fields": errors}
    if not errors:
        summary = {"title": problem.title, "detail": problem.detail}
    if problem.code == "already_registered" and problem.errors:
        summary["existing"] = problem.errors[0].get("entry_id")
        # The API's detail names the entry by its id; the page links to it instead.
        summary["detail"] = (
            "This child already has a live plan on your register, so nothing was saved. "
            "Open that entry to change it, or end it before putting the child on again."
        )
    return errors, summary


def entry_body(typed: dict[str, Any], errors: dict[str, str]) -> dict[str, Any]:
    """The form as the API's EntryCreate body."""
    raw: dict[str, Any] = {
        "child": person_values(typed, "child_", errors),
        "mother": person_values(typed, "mother_", errors),
        "categories": typed["categories"],
    }
    for field in ("expected_delivery_date", "plan_start", "next_review", "last_review"):
        raw[field] = parsed_date(typed, field, errors)
    for field in ("lead_professional", "team_contact", "notes"):
        raw[field] = typed.get(field) or None
    if raw["plan_start"] is None and "plan_start" not in errors:
        errors["plan_start"] = f"This is needed. {DATE_HELP}"
    return raw


def form_of(entry: EntryRead) -> dict[str, Any]:
    """An entry's values as its form shows them (dates DD/MM/YYYY)."""
    form: dict[str, Any] = dict.fromkeys(ENTRY_FIELDS, "")
    for prefix in PEOPLE:
        person = getattr(entry, prefix)
        if person is not None:
            form[f"{prefix}_nhs_number"] = person.nhs_number or ""
            form[f"{prefix}_given_name"] = person.given_name
            form[f"{prefix}_family_name"] = person.family_name
            form[f"{prefix}_date_of_birth"] = uk_date(person.date_of_birth)
    for field in ("expected_delivery_date", "plan_start", "next_review", "last_review"):
        form[field] = uk_date(getattr(entry, field))
    for field in ("lead_professional", "team_contact", "notes"):
        form[field] = getattr(entry, field) or ""
    form["categories"] = [category.value for category in entry.categories]
    form["reason"] = ""
    return form


def _comparable(field: str, value: Any) -> Any:
    """A form value as it compares: dates whichever way they were typed, categories in
    any order."""
    if isinstance(value, list):
        return sorted(value)
    text = str(value or "").strip()
    if field in DATE_FIELDS:
        return iso_date(text) or text
    return text


def _quoted(value: Any) -> str:
    if isinstance(value, list):
        words = [CATEGORIES.get(str(item)) or str(item) for item in value]
        return ", ".join(words) or "none"
    return f"“{value}”" if value else "empty"


def merged_after_conflict(
    typed: dict[str, Any], loaded: EntryRead | None, now: EntryRead
) -> tuple[dict[str, Any], dict[str, str]]:
    """A change typed against the version ``loaded`` when the entry is now at ``now``: the
    form for the new version, with the other person's changes in the fields this one left
    as they were, and this one's changes on top; and, beside each field both changed
    differently, what it is now and what was typed (the typed value kept in the form).
    Without the loaded version, what was typed, as it was."""
    if loaded is None:
        return typed, {}
    before, current = form_of(loaded), form_of(now)
    merged, clashes = dict(typed), {}
    for field in (*ENTRY_FIELDS, "categories"):
        if field == "last_review":
            continue
        mine = _comparable(field, typed.get(field))
        was = _comparable(field, before.get(field))
        theirs = _comparable(field, current.get(field))
        if mine == was:
            merged[field] = current.get(field, "")
        elif theirs not in (was, mine):
            clashes[field] = (
                f"Changed meanwhile to {_quoted(current.get(field))}; you typed "
                f"{_quoted(typed.get(field))} (kept below). Keep the one that is right."
            )
    return merged, clashes


def version_of(form: FormData) -> int | None:
    text = str(form.get("version") or "")
    return int(text) if text.isdigit() and len(text) < 10 else None


def changes_in_words(versions: list[VersionRead]) -> list[str]:
    """What each version changed, in words."""
    words, before = [], None
    for version in versions:
        now = version.entry.model_dump(include=set(CHANGED_WORDS))
        if before is None:
            words.append("Put on the register")
        else:
            changed = [CHANGED_WORDS[key] for key in CHANGED_WORDS if now[key] != before[key]]
            words.append(("Changed " + ", ".join(changed)) if changed else "No field changed")
        before = now
    return words


def step_body(step: str, typed: dict[str, Any], errors: dict[str, str]) -> BaseModel | None:
    """The form as the API's body for the step (ReviewRecord, EntryEnd, BirthRecord)."""
    note = typed.get("note") or None
    if step == "review":
        held = parsed_date(typed, "held_on", errors)
        if held is None and "held_on" not in errors:
            errors["held_on"] = f"This is needed. {DATE_HELP}"
        raw = {
            "held_on": held,
            "next_review": parsed_date(typed, "next_review", errors),
            "note": note,
        }
        return validated(ReviewRecord, raw, errors, whole="held_on")
    if step == "end":
        ended = parsed_date(typed, "ended_on", errors)
        if ended is None and "ended_on" not in errors:
            errors["ended_on"] = f"This is needed. {DATE_HELP}"
        if not typed.get("end_reason"):
            errors["end_reason"] = "Choose the grounds for ending the plan."
        raw = {"reason": typed.get("end_reason") or None, "ended_on": ended, "note": note}
        found: dict[str, str] = {}
        record = validated(EntryEnd, raw, found, whole="ended_on")
        for field, message in found.items():
            errors.setdefault("end_reason" if field == "reason" else field, message)
        return record
    child = person_values(typed, "child_", errors, always=True)
    assert child is not None
    if child["date_of_birth"] is None and "child_date_of_birth" not in errors:
        errors["child_date_of_birth"] = f"This is needed. {DATE_HELP}"
    return validated(BirthRecord, {"child": child, "note": note}, errors, whole="child_given_name")
