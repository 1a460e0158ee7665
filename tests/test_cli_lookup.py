"""`cpr lookup`: a duty officer at a terminal, through the real API on loopback."""

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvicorn
from click.testing import CliRunner, Result
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.models import AuditEvent
from app.cli import main
from app.config import Settings
from app.main import create_app
from tests.conftest import BORN, NHS, World

# Real processes, ports and CPU-bound timing: one xdist worker runs all of these, in turn.
pytestmark = pytest.mark.xdist_group("processes")


def free_port() -> int:
    """A loopback port nothing listens on (once the probe closes)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
async def served(settings: Settings) -> AsyncIterator[str]:
    """Another replica of the service, served by uvicorn on a free loopback port."""
    async with serve(settings) as url:
        yield url


@asynccontextmanager
async def serve(settings: Settings, **changes: Any) -> AsyncIterator[str]:
    port = free_port()
    app = create_app(settings.model_copy(update={"sealing_enabled": False, **changes}))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while True:
        if server.started or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        # Joined off the loop: the replica's shutdown may wait for SQLite's write lock,
        # held by this loop's own app until it runs again (a blocking join held both 10 s).
        await asyncio.to_thread(thread.join, 10)


def _run(url: str, world: World, *args: str) -> tuple[int, str]:
    result = _invoke(url, world, "--reason", "police referral at 02:10", *args)
    return result.exit_code, result.output


def _invoke(
    url: str, world: World, *args: str, input: str | None = None, purpose: bool = True
) -> Result:
    """`cpr lookup` as the duty officer, with --purpose unless told to leave it to ask."""
    credentials = world["duty_officer"].credentials
    chosen = ["--purpose", "out_of_hours_referral"] if purpose else []
    return CliRunner().invoke(
        main,
        ["lookup", "--url", url, "--username", credentials["username"], *chosen, *args],
        input=input,
        env={"CPR_PASSWORD": credentials["password"]},
    )


def one_clear_line(result: Result) -> str:
    """The error a failed command printed: one line on stderr, and no traceback anywhere.
    (The last line: a replica in this process may log to the swapped stderr first.)"""
    assert "Traceback" not in result.output, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


# The CLI blocks, so it runs in a thread: the test app's own event loop (and its
# sequencer, which may be mid-transaction) must keep running meanwhile.


async def test_duty_officer_looks_up_by_nhs_number(served: str, world: World) -> None:
    code, output = await asyncio.to_thread(_run, served, world, "--nhs-number", NHS["multi"])
    assert code == 0, output
    assert "ON PLAN" in output
    assert "neglect, emotional abuse" in output
    assert "Dúbois" not in output


async def test_a_bad_nhs_number_is_explained_not_answered(served: str, world: World) -> None:
    result = await asyncio.to_thread(_invoke, served, world, "--nhs-number", "1234567890")
    assert result.exit_code == 2
    assert "not a valid NHS number" in one_clear_line(result)
    assert "ON PLAN" not in result.output


async def test_the_child_purpose_and_reason_are_asked_for(served: str, world: World) -> None:
    # Enter takes the default purpose: the duty officer's own kind's.
    typed = f"{NHS['multi']}\n\ncalled by police at 02:10\n"
    result = await asyncio.to_thread(_invoke, served, world, input=typed, purpose=False)
    assert result.exit_code == 0, result.output
    assert "NHS number" in result.output
    # Only the purposes an out-of-hours social care organisation may give, its own first.
    assert "1. Out of hours referral (out_of_hours_referral)" in result.stderr
    assert "2. Safeguarding concern (safeguarding_concern)" in result.stderr
    assert "unscheduled_care" not in result.stderr
    assert "police_investigation" not in result.stderr
    assert "Purpose (number or code) [out_of_hours_referral]" in result.output
    assert "ON PLAN" in result.stdout
    assert "neglect, emotional abuse" in result.stdout


async def test_a_purpose_is_chosen_by_its_number(
    served: str, world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    typed = f"{NHS['multi']}\n2\nworried neighbour\n"
    result = await asyncio.to_thread(_invoke, served, world, input=typed, purpose=False)
    assert result.exit_code == 0, result.output
    async with sessionmaker() as session:
        purpose = await session.scalar(
            select(AuditEvent.purpose)
            .where(AuditEvent.reason == "worried neighbour")
            .order_by(AuditEvent.occurred_at.desc())
        )
    assert purpose == "safeguarding_concern"


async def test_names_and_a_uk_date_of_birth_are_asked_for_without_an_nhs_number(
    served: str, world: World
) -> None:
    born = BORN["neglect"].strftime("%d/%m/%Y")
    typed = f"\nAmara\nQuinn-Lowe\n{born}\nplease\n"
    result = await asyncio.to_thread(_invoke, served, world, input=typed)
    assert result.exit_code == 0, result.output
    assert "Date of birth (DD/MM/YYYY)" in result.output
    assert "ON PLAN" in result.stdout
    assert "categories: neglect" in result.stdout


async def test_a_date_that_is_not_one_is_bad_input_naming_the_formats(
    served: str, world: World
) -> None:
    args = ("--given-name", "Amara", "--family-name", "Quinn-Lowe", "--date-of-birth", "31/02/2019")
    result = await asyncio.to_thread(_invoke, served, world, *args, "--reason", "checking")
    assert result.exit_code == 2
    assert "DD/MM/YYYY" in one_clear_line(result)


async def test_a_purpose_the_organisation_may_not_give_is_refused_before_it_is_asked(
    served: str, world: World
) -> None:
    args = (
        "--nhs-number",
        NHS["multi"],
        "--reason",
        "checking",
        "--purpose",
        "police_investigation",
    )
    result = await asyncio.to_thread(_invoke, served, world, *args, purpose=False)
    assert result.exit_code == 3
    line = one_clear_line(result)
    assert "(out of hours social care) may not give the purpose 'police_investigation'" in line
    assert "out_of_hours_referral, safeguarding_concern" in line


async def test_a_refusal_over_the_volume_limit_says_whom_to_call(
    settings: Settings, world: World
) -> None:
    async with serve(settings, lookup_limit_per_enquirer=1) as url:
        # One lookup within the limit (unless earlier tests' lookups already reach it).
        await asyncio.to_thread(_run, url, world, "--nhs-number", NHS["multi"])
        refused = await asyncio.to_thread(
            _invoke, url, world, "--nhs-number", NHS["multi"], "--reason", "again"
        )
    assert refused.exit_code == 3
    line = one_clear_line(refused)
    assert settings.duty_contact_name in line
    assert settings.duty_contact_phone in line


async def test_a_wrong_password_is_refused_in_one_line(served: str, world: World) -> None:
    result = await asyncio.to_thread(
        CliRunner().invoke,
        main,
        ["lookup", "--url", served, "--username", world["duty_officer"].credentials["username"]],
        input="not-the-password\n" + NHS["multi"] + "\nout_of_hours_referral\nx\n",
    )
    assert result.exit_code == 3
    assert "sign-in refused" in one_clear_line(result)


def test_a_server_that_cannot_be_reached_is_one_line_and_exit_4() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    args = ["lookup", "--url", url, "--username", "u", "--password", "p", "--reason", "checking"]
    args += ["--nhs-number", NHS["multi"], "--purpose", "out_of_hours_referral"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 4
    line = one_clear_line(result)
    assert f"cannot reach the cp-register service at {url}" in line
    assert "CPR_URL" in line


def test_the_default_url_follows_make_runs_port() -> None:
    port = free_port()
    args = ["lookup", "--username", "u", "--password", "p", "--reason", "checking"]
    args += ["--nhs-number", NHS["multi"], "--purpose", "out_of_hours_referral"]
    result = CliRunner().invoke(main, args, env={"PORT": str(port), "CPR_URL": None})
    assert result.exit_code == 4
    assert f"http://127.0.0.1:{port}" in one_clear_line(result)


def test_help_documents_the_environment_and_the_exit_codes() -> None:
    result = CliRunner().invoke(main, ["lookup", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for documented in ("CPR_URL", "CPR_USERNAME", "CPR_PASSWORD", "${PORT:-8000}", "--json"):
        assert documented in text
    for code in ("0 answered", "2 bad input", "3 refused", "4 the service cannot be reached"):
        assert code in text


async def test_json_prints_the_services_answer(served: str, world: World) -> None:
    result = await asyncio.to_thread(
        _invoke, served, world, "--nhs-number", NHS["multi"], "--reason", "checking", "--json"
    )
    assert result.exit_code == 0, result.output
    start = result.stdout.index('{\n  "')
    answer, _ = json.JSONDecoder().raw_decode(result.stdout[start:])
    assert answer["status"] == "on_plan"
    assert answer["categories"] == ["neglect", "emotional_abuse"]
    assert set(answer) <= {"lookup_id", "status", "categories", "unborn", "contact"}


async def test_a_service_whose_database_is_down_says_whom_to_call_and_exits_4(
    settings: Settings, world: World
) -> None:
    down = f"postgresql+asyncpg://cpr:Unguessable-42x@127.0.0.1:{free_port()}/cpr"
    async with serve(settings, database_url=down, database_role=None) as url:
        result = await asyncio.to_thread(
            _invoke, url, world, "--nhs-number", NHS["multi"], "--reason", "checking"
        )
    assert result.exit_code == 4, result.output
    line = one_clear_line(result)
    assert settings.duty_contact_name in line
    assert settings.duty_contact_phone in line
