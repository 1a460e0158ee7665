"""docs/audit-log.md's PostgreSQL set-up, followed literally on a fresh server.

The SQL block is run as written on a private cluster (initdb'd by the test, so
nothing exists yet: no ``cpr_app``, nothing granted); ``cpr db upgrade`` then runs
as the owner it creates, and the service as its login role with
``CPR_DATABASE_ROLE=cpr_app``: ready, acting as ``cpr_app``, and unable to change
the log.
"""

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy import text

from app.config import Environment, Settings
from app.main import create_app
from tests.pgcluster import PgCluster
from tests.production import asyncpg_dsn

# Real processes, ports and CPU-bound timing: one xdist worker runs all of these, in turn.
pytestmark = pytest.mark.xdist_group("processes")

DOC = Path(__file__).resolve().parent.parent / "docs" / "audit-log.md"
CPR = Path(sys.executable).parent / "cpr"


def _documented_sql() -> list[str]:
    section = DOC.read_text().split("### Setting up the PostgreSQL roles (operator)", 1)[1]
    block = re.search(r"```sql\n(.*?)```", section, re.S)
    assert block is not None, "the set-up section has no SQL block"
    return [line for line in block.group(1).splitlines() if line and not line.startswith("--")]


def _documented_url(role: str, cluster: PgCluster) -> str:
    """The doc's DATABASE_URL for ``role``, pointed at the private cluster."""
    section = DOC.read_text().split("### Setting up the PostgreSQL roles (operator)", 1)[1]
    found = re.search(rf"DATABASE_URL=(postgresql\+asyncpg://{role}:[^@\s]+@)db/cpr", section)
    assert found is not None, f"the doc gives no DATABASE_URL for {role}"
    return f"{found.group(1)}127.0.0.1:{cluster.port}/cpr"


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    with PgCluster.create() as created:
        yield created


async def _superuser(cluster: PgCluster, statements: list[str], database: str = "postgres") -> None:
    connection = await asyncpg.connect(
        asyncpg_dsn(cluster.admin_url.rsplit("/", 1)[0] + f"/{database}"), timeout=10
    )
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


async def test_the_documented_set_up_works_on_a_fresh_server(
    cluster: PgCluster, tmp_path: Path
) -> None:
    await _superuser(cluster, _documented_sql())

    owner_url = _documented_url("cpr_owner", cluster)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CPR_")}
    upgraded = await asyncio.to_thread(
        subprocess.run,
        [str(CPR), "db", "upgrade"],
        env=env | {"DATABASE_URL": owner_url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert upgraded.returncode == 0, upgraded.stderr[-2000:]

    service = Settings(
        environment=Environment.test,
        database_url=_documented_url("cpr_service", cluster),
        database_role="cpr_app",
        key_dir=tmp_path / "keys",
        checkpoint_key_path=tmp_path / "keys" / "checkpoint.pem",
        checkpoint_dir=tmp_path / "checkpoints",
    )
    app = create_app(service)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.get("/readyz")).status_code == 200
        async with app.state.sessionmaker() as session:
            assert await session.scalar(text("SELECT current_user")) == "cpr_app"
            assert await session.scalar(text("SELECT session_user")) == "cpr_service"
            for privilege in ("UPDATE", "DELETE", "TRUNCATE"):
                assert not await session.scalar(
                    text(f"SELECT has_table_privilege('audit_events', '{privilege}')")
                )
    # The owner needed no CREATEROLE, and has none.
    connection = await asyncpg.connect(asyncpg_dsn(cluster.admin_url), timeout=10)
    try:
        assert not await connection.fetchval(
            "SELECT rolcreaterole OR rolsuper FROM pg_roles WHERE rolname = 'cpr_owner'"
        )
    finally:
        await connection.close()
