"""Bulk import (all or nothing, a row-by-row report) and the continuity export."""

import asyncio
import csv
import io
import secrets
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.models import AuditEvent
from app.cli import main
from app.config import Settings
from app.register.csvformat import EXPORT_COLUMNS, IMPORT_COLUMNS
from app.register.models import RegisterEntry, RegisterEntryVersion
from app.register.rules import add_months
from tests.conftest import NHS, World
from tests.enquiries import ask, fresh_nhs
from tests.test_cli_lookup import free_port, one_clear_line, served  # noqa: F401  (fixture)

TODAY = date.today()
IMPORTS = "/v1/register/imports"


def row(**overrides: str) -> dict[str, str]:
    values = {
        "child_nhs_number": fresh_nhs(),
        "child_given_name": "".join(secrets.choice("abcdefghij") for _ in range(8)).title(),
        "child_family_name": "Importtest",
        "child_date_of_birth": (TODAY - timedelta(days=1500)).isoformat(),
        "categories": "neglect;emotional_abuse",
        "plan_start": (TODAY - timedelta(days=20)).isoformat(),
        "lead_professional": "Imported Worker",
        "notes": '=HYPERLINK("http://evil")',
    }
    values.update(overrides)
    return values


def unborn_row() -> dict[str, str]:
    return {
        "mother_nhs_number": fresh_nhs(),
        "mother_given_name": "Importmother",
        "mother_family_name": "".join(secrets.choice("abcdefghij") for _ in range(8)).title(),
        "mother_date_of_birth": "1995-02-03",
        "expected_delivery_date": (TODAY + timedelta(days=90)).isoformat(),
        "categories": "physical_abuse",
        "plan_start": TODAY.isoformat(),
    }


def csv_file(rows: list[dict[str, str]], columns: tuple[str, ...] = IMPORT_COLUMNS) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


async def upload(
    client: httpx.AsyncClient, world: World, body: bytes, who: str = "custodian_a"
) -> httpx.Response:
    return await client.post(
        IMPORTS, content=body, headers={**world[who].headers, "Content-Type": "text/csv"}
    )


async def entries_named(sessionmaker: async_sessionmaker[AsyncSession], nhs: list[str]) -> int:
    async with sessionmaker() as session:
        return await session.scalar(
            select(func.count()).where(RegisterEntry.subject_nhs_number.in_(nhs))
        )


async def test_a_good_file_is_imported_whole_and_answers_lookups(
    client: httpx.AsyncClient, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    rows = [row(), row(categories="sexual_abuse"), unborn_row(), row(child_nhs_number="")]
    response = await upload(client, world, b"\xef\xbb\xbf" + csv_file(rows))  # Excel's BOM
    assert response.status_code == 201, response.text
    result = response.json()
    assert result["imported"] == 4

    answer = await ask(client, world, "hospital_client", rows[1]["child_nhs_number"])
    assert answer.json()["categories"] == ["sexual_abuse"]
    unborn = await ask(client, world, "hospital_client", rows[2]["mother_nhs_number"])
    assert (unborn.json()["status"], unborn.json()["unborn"]) == ("on_plan", True)

    async with sessionmaker() as session:
        event = await session.scalar(
            select(AuditEvent).where(AuditEvent.request_id == response.headers["x-request-id"])
        )
        versions = await session.scalars(
            select(RegisterEntryVersion.change_reason)
            .join(RegisterEntry, RegisterEntry.id == RegisterEntryVersion.entry_id)
            .where(RegisterEntry.subject_nhs_number == rows[0]["child_nhs_number"])
        )
        reasons = list(versions)
    assert event is not None
    assert event.event_type == "register.imported"
    assert event.detail["sha256"] == result["sha256"]
    assert event.detail["rows"] == 4
    assert reasons == [f"register import {result['import_id']}"]

    found = await client.post(
        "/v1/register/entries/search",
        json={"nhs_number": rows[0]["child_nhs_number"]},
        headers=world["custodian_a"].headers,
    )
    [entry] = found.json()
    assert entry["categories"] == ["neglect", "emotional_abuse"]
    assert entry["next_review"] == add_months(TODAY - timedelta(days=20), 3).isoformat()


async def test_one_bad_row_refuses_the_whole_file_with_a_report_by_row_and_column(
    client: httpx.AsyncClient, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    good = [row() for _ in range(5)]
    bad_nhs = row(child_nhs_number="9991000012")
    rows = [
        *good[:2],
        bad_nhs,  # row 4
        row(child_date_of_birth=(TODAY + timedelta(days=4)).isoformat()),  # row 5
        row(categories="neglect;bullying"),  # row 6
        *good[2:],
        row(plan_start="2020-13-01"),  # row 10
    ]
    response = await upload(client, world, csv_file(rows))
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["title"] == "Import refused"
    report = {(e["row"], e["column"]) for e in problem["errors"]}
    assert report == {
        (4, "child_nhs_number"),
        (5, "child_date_of_birth"),
        (6, "categories"),
        (10, "plan_start"),
    }
    assert bad_nhs["child_nhs_number"] not in response.text
    assert bad_nhs["child_given_name"] not in response.text
    # Nothing at all was imported, not even the good rows.
    assert await entries_named(sessionmaker, [r["child_nhs_number"] for r in good]) == 0
    async with sessionmaker() as session:
        event = await session.scalar(
            select(AuditEvent).where(AuditEvent.request_id == response.headers["x-request-id"])
        )
    assert event is not None
    assert (event.event_type, event.refusal) == ("register.import_refused", "invalid_rows")


async def test_children_already_on_the_register_or_twice_in_the_file_are_reported(
    client: httpx.AsyncClient, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    twice = row()
    rows = [
        row(child_nhs_number=NHS["neglect"]),  # row 2: already on A's register
        twice,  # row 3
        {**twice, "child_nhs_number": ""},  # row 4: same names and birth, no number
        row(),
    ]
    response = await upload(client, world, csv_file(rows))
    assert response.status_code == 422, response.text
    errors = {e["row"]: e["problem"] for e in response.json()["errors"]}
    assert str(world.entries["neglect"].id) in errors[2]
    assert "row 3" in errors[4]
    assert set(errors) == {2, 4}
    assert await entries_named(sessionmaker, [twice["child_nhs_number"]]) == 0

    # Another authority's child is not a duplicate: B may import a child A holds.
    # (A fresh child: the fixture's children must stay with one authority.)
    shared = csv_file([row()])
    assert (await upload(client, world, shared)).status_code == 201
    assert (await upload(client, world, shared, "custodian_b")).status_code == 201


async def test_every_problem_of_every_row_is_reported_with_the_duplicates(
    client: httpx.AsyncClient, world: World
) -> None:
    twice = row()
    rows = [
        row(child_nhs_number="9991000012", plan_start=(TODAY + timedelta(days=3)).isoformat()),
        twice,  # row 3
        row(categories="neglect;bullying", child_date_of_birth="yesterday"),  # row 4
        {**twice, "child_nhs_number": ""},  # row 5: row 3's child again
        row(child_nhs_number=NHS["neglect"]),  # row 6: already on A's register
    ]
    response = await upload(client, world, csv_file(rows))
    assert response.status_code == 422, response.text
    report = [(e["row"], e["column"]) for e in response.json()["errors"]]
    assert report == [
        (2, "child_nhs_number"),
        (2, "plan_start"),
        (4, "child_date_of_birth"),
        (4, "categories"),
        (5, "child"),
        (6, "child"),
    ]
    assert response.json()["detail"].startswith("6 problems;")


async def test_categories_in_words_and_uk_dates_are_accepted(
    client: httpx.AsyncClient, world: World
) -> None:
    rows = [
        row(categories="Neglect;EMOTIONAL ABUSE", child_date_of_birth="25/12/2020"),
        row(
            categories="Physical Abuse", plan_start=(TODAY - timedelta(days=3)).strftime("%d/%m/%Y")
        ),
    ]
    response = await upload(client, world, csv_file(rows))
    assert response.status_code == 201, response.text
    assert response.json()["imported"] == 2
    entries = []
    for imported in rows:
        found = await client.post(
            "/v1/register/entries/search",
            json={"nhs_number": imported["child_nhs_number"]},
            headers=world["custodian_a"].headers,
        )
        [entry] = found.json()
        entries.append(entry)
    assert entries[0]["categories"] == ["neglect", "emotional_abuse"]
    assert entries[0]["child"]["date_of_birth"] == "2020-12-25"
    assert entries[1]["categories"] == ["physical_abuse"]
    assert entries[1]["plan_start"] == (TODAY - timedelta(days=3)).isoformat()


@pytest.mark.parametrize(
    ("cells", "column", "said"),
    [
        ({"plan_start": "2020-13-01"}, "plan_start", "DD/MM/YYYY (e.g. 25/12/2020) or YYYY-MM-DD"),
        ({"child_date_of_birth": "12/25/2020"}, "child_date_of_birth", "DD/MM/YYYY"),
        ({"child_date_of_birth": "25/12/1890"}, "child_date_of_birth", "from 1900-01-01"),
        ({"categories": "Neglect;bullying"}, "categories", "neglect, physical abuse, sexual abuse"),
        # Left empty: needed, not "not a date".
        ({"plan_start": ""}, "plan_start", "is needed"),
    ],
)
async def test_a_cell_that_is_refused_says_what_is_accepted(
    client: httpx.AsyncClient, world: World, cells: dict[str, str], column: str, said: str
) -> None:
    response = await upload(client, world, csv_file([row(**cells)]))
    assert response.status_code == 422, response.text
    [error] = response.json()["errors"]
    assert (error["row"], error["column"]) == (2, column)
    assert said in error["problem"]
    assert response.json()["detail"].startswith("1 problem;")


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"", "empty"),
        (b"categories,plan_start,address\nneglect,2026-01-01,x\n", "unknown column"),
        (b"child_given_name,categories\nAmy,neglect\n", "required column missing"),
        (b"categories,categories,plan_start\n", "column named twice"),
        (b"categories,plan_start\n", "no entries"),
        (b"categories,plan_start\nneglect,2026-01-01,extra\n", "cells"),
        ("child_given_name,categories,plan_start\nZoë,neglect,x\n".encode("latin-1"), "UTF-8"),
    ],
)
async def test_files_that_are_not_register_files_are_refused_clearly(
    client: httpx.AsyncClient, world: World, body: bytes, problem: str
) -> None:
    response = await upload(client, world, body)
    assert response.status_code == 422, response.text
    assert any(problem in e["problem"] for e in response.json()["errors"]), response.text


async def test_only_csv_is_accepted_and_the_file_limit_is_the_imports_own(
    client: httpx.AsyncClient, world: World, settings: Settings
) -> None:
    as_json = await client.post(IMPORTS, json={"rows": []}, headers=world["custodian_a"].headers)
    assert as_json.status_code == 415
    # Bigger than any JSON body may be, well within the import's limit.
    big = csv_file([row(notes="n" * 2000) for _ in range(60)])
    assert len(big) > settings.max_body_bytes
    assert (await upload(client, world, big)).status_code == 201
    too_big = await upload(client, world, b"x" * (settings.import_max_bytes + 1))
    assert too_big.status_code == 413
    elsewhere = await client.post(
        "/v1/register/entries/search",
        content=b"{" + b" " * settings.max_body_bytes + b"}",
        headers={**world["custodian_a"].headers, "Content-Type": "application/json"},
    )
    assert elsewhere.status_code == 413


# --- export ------------------------------------------------------------------------------


async def test_export_gives_live_entries_with_what_a_reference_point_needs_and_is_audited(
    client: httpx.AsyncClient, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    response = await client.post("/v1/register/exports", headers=world["custodian_a"].headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    lines = list(csv.DictReader(io.StringIO(response.text)))
    assert tuple(lines[0].keys()) == EXPORT_COLUMNS
    by_nhs = {line["child_nhs_number"] or line["mother_nhs_number"]: line for line in lines}
    assert by_nhs[NHS["multi"]]["categories"] == "neglect;emotional_abuse"
    assert by_nhs[NHS["mother"]]["unborn"] == "True"
    assert by_nhs[NHS["multi"]]["contact_phone"] == world.orgs["authority_a"].contact_phone
    for gone in ("ended_own", "adult", "ended_other", "dup_b"):
        assert NHS[gone] not in by_nhs
    # Need to know: no notes, professionals or plan dates.
    assert "custodian-only note" not in response.text
    assert "Lead Professional Name" not in response.text
    async with sessionmaker() as session:
        event = await session.scalar(
            select(AuditEvent).where(AuditEvent.request_id == response.headers["x-request-id"])
        )
    assert event is not None
    assert event.event_type == "register.exported"
    assert event.detail["entries"] == len(lines)


# --- the command line ------------------------------------------------------------------


def _import(url: str, world: World, path: Path) -> Any:
    credentials = world["custodian_a"].credentials
    return CliRunner().invoke(
        main,
        [
            "register",
            "import",
            str(path),
            "--url",
            url,
            "--username",
            credentials["username"],
            "--password",
            credentials["password"],
        ],
    )


@pytest.fixture
def import_file(tmp_path: Path) -> Path:
    return tmp_path / "register.csv"


async def test_cpr_register_import_checks_then_sends_and_reports(
    served: str,  # noqa: F811
    world: World,
    import_file: Path,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    rows = [row() for _ in range(30)]
    await asyncio.to_thread(import_file.write_bytes, csv_file(rows))
    result = await asyncio.to_thread(_import, served, world, import_file)
    assert result.exit_code == 0, result.output
    assert "imported 30 entries" in result.output
    assert "Checking rows" in result.output
    assert await entries_named(sessionmaker, [r["child_nhs_number"] for r in rows]) == 30

    bad = [row(), row(child_date_of_birth="yesterday")]
    await asyncio.to_thread(import_file.write_bytes, csv_file(bad))
    refused = await asyncio.to_thread(_import, served, world, import_file)
    assert refused.exit_code == 2
    assert "row 3, child_date_of_birth" in refused.output
    assert "nothing was sent" in refused.output
    assert await entries_named(sessionmaker, [bad[0]["child_nhs_number"]]) == 0

    # A duplicate of what is already on the register is only known to the service.
    await asyncio.to_thread(import_file.write_bytes, csv_file([row(), rows[0]]))
    server_refused = await asyncio.to_thread(_import, served, world, import_file)
    assert server_refused.exit_code == 2
    assert "row 3, child" in server_refused.output


async def test_cpr_register_import_reports_every_problem_counted_in_words(
    served: str,  # noqa: F811
    world: World,
    import_file: Path,
) -> None:
    twice = row()
    bad = [
        twice,
        row(child_nhs_number="9991000012", plan_start="2020-13-01"),  # row 3: two problems
        {**twice, "child_nhs_number": ""},  # row 4: row 2's child again
    ]
    await asyncio.to_thread(import_file.write_bytes, csv_file(bad))
    refused = await asyncio.to_thread(_import, served, world, import_file)
    assert refused.exit_code == 2
    assert "row 3, child_nhs_number" in refused.stderr
    assert "row 3, plan_start: not a date: give DD/MM/YYYY" in refused.stderr
    assert "row 4, child: the same child as row 2 of this file" in refused.stderr
    assert "3 problems: nothing was sent" in one_clear_line(refused)

    await asyncio.to_thread(import_file.write_bytes, csv_file([row(plan_start="2020-13-01")]))
    one = await asyncio.to_thread(_import, served, world, import_file)
    assert "1 problem: nothing was sent" in one_clear_line(one)


async def test_cpr_register_import_shows_progress_to_100_percent(
    served: str,  # noqa: F811
    world: World,
    import_file: Path,
) -> None:
    # A quoted line break and a blank line: more lines than rows.
    good = row(categories="Emotional abuse", notes="first line\nsecond line")
    await asyncio.to_thread(import_file.write_bytes, csv_file([good]) + b"\r\n")
    result = await asyncio.to_thread(_import, served, world, import_file)
    assert result.exit_code == 0, result.output
    assert "imported 1 entry " in result.stdout
    assert "Checking rows: 100 %" in result.stderr
    assert "Sending: 100 %" in result.stderr


async def test_cpr_register_import_refusals_and_an_unreachable_server_are_one_line(
    served: str,  # noqa: F811
    world: World,
    import_file: Path,
) -> None:
    await asyncio.to_thread(import_file.write_bytes, csv_file([row()]))
    args = ["register", "import", str(import_file), "--username"]
    wrong = await asyncio.to_thread(
        CliRunner().invoke,
        main,
        [*args, world["custodian_a"].credentials["username"], "--url", served],
        input="not-the-password\n",
    )
    assert wrong.exit_code == 3
    assert "sign-in refused" in one_clear_line(wrong)

    duty = world["duty_officer"].credentials
    not_custodian = await asyncio.to_thread(
        CliRunner().invoke,
        main,
        [*args, duty["username"], "--password", duty["password"], "--url", served],
    )
    assert not_custodian.exit_code == 3
    one_clear_line(not_custodian)

    url = f"http://127.0.0.1:{free_port()}"
    gone = await asyncio.to_thread(
        CliRunner().invoke, main, [*args, "u", "--password", "p", "--url", url]
    )
    assert gone.exit_code == 4
    assert f"cannot reach the cp-register service at {url}" in one_clear_line(gone)


def test_cpr_register_import_help_documents_formats_and_exit_codes() -> None:
    result = CliRunner().invoke(main, ["register", "import", "--help"])
    text = " ".join(result.output.split())
    for documented in ("CPR_URL", "CPR_USERNAME", "CPR_PASSWORD", "${PORT:-8000}", "DD/MM/YYYY"):
        assert documented in text
    for code in ("0 imported", "2 the file has problems", "3 refused", "4 the service"):
        assert code in text
