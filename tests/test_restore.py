"""Backups restored as deploy/BACKUP.md says, and checked against checkpoints held outside
the database (issue 14).

A dump taken by the schema owner (`pg_dump -Fc`), restored by the schema owner into a
fresh database (`pg_restore --single-transaction --exit-on-error`), then
`cpr audit verify` run as the service against the checkpoint directory, which the
backup never held. A restore of the newest dump verifies; a restore of an older one
(the newest events lost) is reported as truncated against the held checkpoint, and
the restored service still refuses to change the log.
"""

import asyncio
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.deployment import HTTP_TIMEOUT_SECONDS, Deployment, deploy, tokens
from tests.production import APP_ROLE, asyncpg_dsn, run_as_superuser

# Real processes, ports and CPU-bound timing: one xdist worker runs all of these, in turn.
pytestmark = pytest.mark.xdist_group("processes")

DRAIN_BOUND_SECONDS = 20.0


@pytest.fixture(scope="module")
def production(
    postgres_admin_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    with deploy(postgres_admin_url, tmp_path_factory.mktemp("restore")) as deployed:
        yield deployed


def _libpq(url: str) -> list[str]:
    """pg_dump / pg_restore connection options for ``url``."""
    parts = make_url(url)
    return [
        f"--host={parts.host}",
        f"--port={parts.port or 5432}",
        f"--username={parts.username}",
        f"--dbname={parts.database}",
    ]


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)  # noqa: S603
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stderr}"


def dump(production: Deployment, path: Path) -> None:
    _run(["pg_dump", "--format=custom", f"--file={path}", *_libpq(production.database.owner_url)])


async def restore(production: Deployment, path: Path, name: str) -> str:
    """A fresh database restored from ``path`` by the schema owner; its service URL."""
    owner = make_url(production.database.owner_url).username
    await run_as_superuser(production.database.admin_url, f'CREATE DATABASE "{name}" OWNER {owner}')
    owner_url = make_url(production.database.owner_url).set(database=name)
    _run(
        [
            "pg_restore",
            "--single-transaction",
            "--exit-on-error",
            *_libpq(owner_url.render_as_string(hide_password=False)),
            str(path),
        ]
    )
    return (
        make_url(production.database.service_url)
        .set(database=name)
        .render_as_string(hide_password=False)
    )


async def drop(production: Deployment, name: str) -> None:
    await run_as_superuser(
        production.database.admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
    )


async def lookups(base_url: str, token: str, count: int) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=HTTP_TIMEOUT_SECONDS) as http:
        for n in range(count):
            answer = await http.post(
                "/v1/lookups",
                headers={"Authorization": f"Bearer {token}"},
                json={
                    "subject": {"nhs_number": "9990000018"},
                    "purpose": "unscheduled_care",
                    "reason": "restore test",
                    "enquirer": {"id": f"restore-{n % 3}", "name": "Dr R", "role": "registrar"},
                },
            )
            assert answer.status_code == 200, answer.text


async def sealed_and_copied(production: Deployment) -> int:
    """Waits until everything is sealed and the newest checkpoint covers it; its size."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DRAIN_BOUND_SECONDS
    latest = Path(production.env["CPR_CHECKPOINT_DIR"]) / "latest.txt"
    while True:
        rows = await production.admin(
            "SELECT (SELECT count(*) FROM audit_unsealed) AS unsealed,"
            " (SELECT count(*) FROM audit_seals) AS sealed"
        )
        unsealed, sealed = rows[0]["unsealed"], rows[0]["sealed"]
        if not unsealed and latest.exists() and f"\n{sealed}\n" in latest.read_text():
            return int(sealed)
        assert loop.time() < deadline, f"{unsealed} unsealed; latest.txt behind {sealed}"
        await asyncio.sleep(0.25)


async def test_a_restored_backup_verifies_and_a_stale_one_is_reported_truncated(
    production: Deployment, tmp_path: Path
) -> None:
    older, newer = tmp_path / "older.dump", tmp_path / "newer.dump"
    async with (
        production.server("api", CPR_BACKGROUND_IN_API="false") as api,
        production.worker("worker"),
    ):
        token = (await tokens(api.base_url, production.credentials))[0]
        await lookups(api.base_url, token, 10)
        at_older = await sealed_and_copied(production)
        dump(production, older)
        await lookups(api.base_url, token, 10)
        at_newer = await sealed_and_copied(production)
        dump(production, newer)
    assert at_newer > at_older

    tag = secrets.token_hex(3)
    for label, path, expect_ok in (("newer", newer, True), ("older", older, False)):
        name = f"{production.database.name}_{label}_{tag}"
        try:
            service_url = await restore(production, path, name)
            done = production.cli("audit", "verify", DATABASE_URL=service_url)
            if expect_ok:
                assert done.returncode == 0, done.stdout + done.stderr
                assert f"size {at_newer}," in done.stdout
            else:
                assert done.returncode == 1, done.stdout + done.stderr
                assert "FAILED truncated" in done.stdout, done.stdout
                assert f"size {at_older}," in done.stdout
            # The restored grants: the service still cannot change the log.
            connection = await asyncpg.connect(asyncpg_dsn(service_url), timeout=5)
            try:
                await connection.execute(f"SET ROLE {APP_ROLE}")
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await connection.execute("DELETE FROM audit_events")
            finally:
                await connection.close()
        finally:
            await drop(production, name)
