"""`cpr org|client|user|admin`: the operator's commands make the same changes as the
admin API, through the same service functions, with the same rules and audit events.

Each command runs in a worker thread (it starts its own event loop) against the
test database, and what it made is then used through real HTTP.
"""

import asyncio
import re
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.models import AuditEvent
from app.cli import main
from app.config import get_settings
from tests.conftest import NHS, World
from tests.test_cli_lookup import free_port, one_clear_line

ENQUIRER = {"id": "C123456", "name": "Dr A Jones", "role": "ED registrar"}


pytestmark = pytest.mark.usefixtures("cli_env")


async def cpr(*args: str, input: str | None = None) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, main, list(args), input=input)


def field(result: Result, name: str) -> str:
    """A ``name: value`` line of the command's output.

    Not anchored at the line start: CliRunner swaps ``sys.stdout`` for the whole
    process, so a log line from the app under test (its audit sequencer runs in
    the test's event loop) may land in front of it.
    """
    match = re.search(rf"{name}: (\S+)\n", result.stdout)
    assert match, result.output
    return match.group(1)


async def org_create(kind: str = "emergency_department") -> tuple[str, str]:
    name = f"CLI test {kind} {uuid.uuid4().hex[:8]}"
    result = await cpr(
        "org",
        "create",
        "--kind",
        kind,
        "--name",
        name,
        "--contact-name",
        "Safeguarding desk",
        "--contact-phone",
        "020 7946 0666",
    )
    assert result.exit_code == 0, result.output
    match = re.search(rf"([0-9a-f-]{{36}})\t{kind}\tactive\t-\t{name}\n", result.stdout)
    assert match, result.output
    return match.group(1), name


async def client_create(organisation: str) -> tuple[str, str]:
    result = await cpr("client", "create", "--org", organisation, "--name", "CLI EPR")
    assert result.exit_code == 0, result.output
    return field(result, "client_id"), field(result, "client_secret")


async def token(http: httpx.AsyncClient, data: dict[str, str]) -> httpx.Response:
    return await http.post("/oauth/token", data=data)


async def client_token(http: httpx.AsyncClient, client_id: str, secret: str) -> httpx.Response:
    data = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
    return await token(http, data)


async def lookup(http: httpx.AsyncClient, access_token: str, **body: Any) -> httpx.Response:
    return await http.post(
        "/v1/lookups",
        json={
            "subject": {"nhs_number": NHS["neglect"]},
            "reason": "attended with unexplained bruising",
            **body,
        },
        headers={"Authorization": f"Bearer {access_token}"},
    )


async def test_cli_client_gets_a_token_and_looks_up_until_revoked(
    client: httpx.AsyncClient, world: World
) -> None:
    _, org_name = await org_create()
    client_id, secret = await client_create(org_name)
    issued = await client_token(client, client_id, secret)
    assert issued.status_code == 200, issued.text
    access_token = issued.json()["access_token"]
    answer = await lookup(client, access_token, purpose="unscheduled_care", enquirer=ENQUIRER)
    assert answer.status_code == 200, answer.text

    result = await cpr("client", "revoke", client_id)
    assert result.exit_code == 0, result.output
    answer = await lookup(client, access_token, purpose="unscheduled_care", enquirer=ENQUIRER)
    assert answer.status_code == 401


async def test_cli_rotate_replaces_the_secret(client: httpx.AsyncClient, world: World) -> None:
    org_id, _ = await org_create()
    client_id, old_secret = await client_create(org_id)
    result = await cpr("client", "rotate", client_id)
    assert result.exit_code == 0, result.output
    assert field(result, "client_id") == client_id
    new_secret = field(result, "client_secret")
    assert (await client_token(client, client_id, old_secret)).status_code == 401
    assert (await client_token(client, client_id, new_secret)).status_code == 200


async def test_cli_secret_is_printed_once_and_said_to_be(world: World) -> None:
    org_id, _ = await org_create()
    result = await cpr("client", "create", "--org", org_id, "--name", "CLI EPR")
    assert result.stdout.count(field(result, "client_secret")) == 1
    assert "Shown this once" in result.stderr


async def test_cli_org_list_and_disable_revokes_its_clients(
    client: httpx.AsyncClient, world: World
) -> None:
    org_id, org_name = await org_create("police")
    client_id, secret = await client_create(org_name)
    access_token = (await client_token(client, client_id, secret)).json()["access_token"]

    listed = await cpr("org", "list", "--kind", "police")
    assert f"{org_id}\tpolice\tactive\t-\t{org_name}\n" in listed.stdout

    result = await cpr("org", "disable", org_name)
    assert result.exit_code == 0, result.output
    answer = await lookup(client, access_token, purpose="police_investigation", enquirer=ENQUIRER)
    assert answer.status_code == 401
    listed = await cpr("org", "list")
    assert f"{org_id}\tpolice\tdeactivated\t-\t{org_name}\n" in listed.stdout

    await cpr("org", "enable", org_id)
    answer = await lookup(client, access_token, purpose="police_investigation", enquirer=ENQUIRER)
    assert answer.status_code == 401  # the old token stays revoked
    access_token = (await client_token(client, client_id, secret)).json()["access_token"]
    answer = await lookup(client, access_token, purpose="police_investigation", enquirer=ENQUIRER)
    assert answer.status_code == 200


async def test_cli_user_signs_in_until_disabled(client: httpx.AsyncClient, world: World) -> None:
    _, org_name = await org_create("out_of_hours_social_care")
    username = f"cli-duty-{uuid.uuid4().hex[:6]}"
    result = await cpr(
        "user",
        "create",
        "--org",
        org_name,
        "--username",
        username,
        "--full-name",
        "CLI Duty Officer",
        "--role",
        "duty_officer",
    )
    assert result.exit_code == 0, result.output
    password = field(result, "password")
    issued = await token(
        client, {"grant_type": "password", "username": username, "password": password}
    )
    assert issued.status_code == 200, issued.text
    access_token = issued.json()["access_token"]
    assert (await lookup(client, access_token, purpose="out_of_hours_referral")).status_code == 200

    result = await cpr("user", "disable", username)
    assert result.exit_code == 0, result.output
    assert (await lookup(client, access_token, purpose="out_of_hours_referral")).status_code == 401


async def test_cli_prompted_password_must_be_strong(world: World) -> None:
    org_id, _ = await org_create("out_of_hours_social_care")
    args = ["user", "create", "--org", org_id, "--full-name", "CLI Duty Officer"]
    args += ["--role", "duty_officer", "--prompt-password"]
    weak = await cpr(*args, "--username", f"weak-{uuid.uuid4().hex[:6]}", input="short\nshort\n")
    assert weak.exit_code == 1
    assert "at least 12 characters" in weak.output
    strong = "Tq-correct-horse-battery"
    ok = await cpr(*args, "--username", f"ok-{uuid.uuid4().hex[:6]}", input=f"{strong}\n{strong}\n")
    assert ok.exit_code == 0, ok.output
    assert strong not in ok.stdout


async def test_cli_refuses_what_the_kind_may_not_hold(world: World) -> None:
    org_id, _ = await org_create("emergency_department")
    result = await cpr("client", "create", "--org", org_id, "--name", "x", "--scope", "admin")
    assert result.exit_code == 1
    assert "admin" in result.output
    result = await cpr(
        "user",
        "create",
        "--org",
        org_id,
        "--username",
        f"cust-{uuid.uuid4().hex[:6]}",
        "--full-name",
        "Misplaced Custodian",
        "--role",
        "custodian",
    )
    assert result.exit_code == 1
    assert "custodian" in result.output


async def test_cli_refuses_duplicates_and_unknown_names(world: World) -> None:
    _, org_name = await org_create()
    again = await cpr(
        "org",
        "create",
        "--kind",
        "police",
        "--name",
        org_name,
        "--contact-name",
        "x",
        "--contact-phone",
        "020 7946 0000",
    )
    assert again.exit_code == 1
    assert "already taken" in again.output
    for args in (
        ("client", "create", "--org", "No such organisation", "--name", "x"),
        ("client", "revoke", "cpr-0000000000000000"),
        ("user", "disable", f"nobody-{uuid.uuid4().hex[:6]}"),
        ("org", "disable", str(uuid.uuid4())),
    ):
        result = await cpr(*args)
        assert result.exit_code == 1, args
        assert "no " in result.output, args


async def test_cli_refuses_invalid_contact_phone(world: World) -> None:
    result = await cpr(
        "org",
        "create",
        "--kind",
        "police",
        "--name",
        f"CLI bad phone {uuid.uuid4().hex[:6]}",
        "--contact-name",
        "x",
        "--contact-phone",
        "call us",
    )
    assert result.exit_code == 1
    assert "contact_phone" in result.output


async def test_cli_create_operator_bootstraps_an_operator_of_the_admin_api(
    client: httpx.AsyncClient, world: World
) -> None:
    org_name = f"CLI operations {uuid.uuid4().hex[:6]}"
    usernames = [f"op-{uuid.uuid4().hex[:6]}" for _ in range(2)]
    passwords = []
    for username in usernames:
        result = await cpr(
            "admin",
            "create-operator",
            "--username",
            username,
            "--full-name",
            "CLI Operator",
            "--organisation",
            org_name,
            "--contact-phone",
            "020 7946 0900",
        )
        assert result.exit_code == 0, result.output
        passwords.append(field(result, "password"))

    listed = await cpr("org", "list", "--kind", "service_operator")
    assert listed.stdout.count(f"\t{org_name}\n") == 1
    for username, password in zip(usernames, passwords, strict=True):
        data = {"grant_type": "password", "username": username, "password": password}
        issued = await token(client, data)
        assert issued.status_code == 200, issued.text
        assert issued.json()["scope"] == "admin"
        headers = {"Authorization": f"Bearer {issued.json()['access_token']}"}
        assert (await client.get("/v1/admin/organisations", headers=headers)).status_code == 200


async def test_cli_create_operator_refuses_a_non_operator_organisation(world: World) -> None:
    _, hospital = await org_create("emergency_department")
    result = await cpr(
        "admin",
        "create-operator",
        "--username",
        f"op-{uuid.uuid4().hex[:6]}",
        "--full-name",
        "CLI Operator",
        "--organisation",
        hospital,
        "--contact-phone",
        "020 7946 0900",
    )
    assert result.exit_code == 1
    assert "emergency_department" in result.output


async def test_cli_changes_are_audit_events_by_the_command(
    world: World, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    org_id, _ = await org_create()
    client_id, _ = await client_create(org_id)
    await cpr("client", "rotate", client_id)
    await cpr("client", "revoke", client_id)
    await cpr("org", "disable", org_id)
    async with sessionmaker() as session:
        rows = await session.execute(
            select(AuditEvent.event_type, AuditEvent.principal)
            .where(AuditEvent.organisation_id == uuid.UUID(org_id))
            .order_by(AuditEvent.occurred_at)
        )
        events = [tuple(row) for row in rows.all()]
    assert events == [
        ("admin.organisation_created", "cli:org-create"),
        ("admin.client_created", "cli:client-create"),
        ("admin.client_secret_rotated", "cli:client-rotate"),
        ("admin.client_revoked", "cli:client-revoke"),
        ("admin.organisation_deactivated", "cli:org-disable"),
    ]


async def test_cli_audit_verify_with_the_database_unreachable_is_one_line_and_exit_4(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    closed = free_port()
    monkeypatch.setenv(
        "DATABASE_URL", f"postgresql+asyncpg://cpr:Unguessable-42x@127.0.0.1:{closed}/cpr"
    )
    monkeypatch.delenv("CPR_DATABASE_ROLE", raising=False)
    monkeypatch.setenv("CPR_CHECKPOINT_KEY_PATH", str(tmp_path / "checkpoint.pem"))
    monkeypatch.setenv("CPR_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    get_settings.cache_clear()
    assert (await cpr("audit", "keygen")).exit_code == 0  # no database needed
    result = await cpr("audit", "verify")
    assert result.exit_code == 4, result.output
    line = one_clear_line(result)
    assert f"cannot reach the database (127.0.0.1:{closed}/cpr)" in line
    assert "Unguessable-42x" not in result.output


def test_cli_audit_verify_help_documents_its_exit_codes() -> None:
    text = " ".join(CliRunner().invoke(main, ["audit", "verify", "--help"]).output.split())
    for code in ("0 the log verifies", "1 it does not", "4 the database cannot be reached"):
        assert code in text
