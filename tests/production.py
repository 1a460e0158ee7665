"""PostgreSQL set up as docs/audit-log.md prescribes for production.

A superuser creates the schema owner (who runs the migrations), the database it
owns, the application role ``cpr_app`` (NOLOGIN) and the service's login role,
a NOINHERIT member of ``cpr_app``. The service then logs in as that login role
with ``CPR_DATABASE_ROLE=cpr_app``; it never connects as a superuser or owner.

Roles are cluster-wide and the tests share one server, so the owner and login
roles get a name of their own per database; ``cpr_app`` is shared, as it would
be by every database of one cluster.
"""

import asyncio
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import asyncpg
from sqlalchemy.engine import make_url

APP_ROLE = "cpr_app"


def asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def run_as_superuser(admin_url: str, *statements: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(admin_url), timeout=10)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


@dataclass(frozen=True)
class ProductionDatabase:
    name: str
    owner_url: str  # runs `cpr db upgrade`
    service_url: str  # the service's login role; with CPR_DATABASE_ROLE=cpr_app
    admin_url: str  # a superuser, for tests that tamper with the store as only one could


def setup_statements(database: str, owner: str, service: str) -> list[str]:
    """The operator's one-off set-up, as a superuser (docs/audit-log.md)."""
    return [
        f"CREATE ROLE {owner} LOGIN",
        f'CREATE DATABASE "{database}" OWNER {owner}',
        # Roles are the server's, shared by every database and every test worker: two
        # creating it at once must both succeed.
        f"""DO $$ BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
                CREATE ROLE {APP_ROLE} NOLOGIN;
            END IF;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END $$""",
        f"CREATE ROLE {service} LOGIN NOINHERIT IN ROLE {APP_ROLE}",
    ]


@contextmanager
def production_database(admin_url: str) -> Iterator[ProductionDatabase]:
    """A database with its owner and service login roles; all dropped afterwards."""
    tag = secrets.token_hex(4)
    name, owner, service = f"cpr_test_{tag}", f"cpr_owner_{tag}", f"cpr_service_{tag}"
    asyncio.run(run_as_superuser(admin_url, *setup_statements(name, owner, service)))
    base = make_url(admin_url).set(database=name)
    try:
        yield ProductionDatabase(
            name=name,
            owner_url=base.set(username=owner).render_as_string(hide_password=False),
            service_url=base.set(username=service).render_as_string(hide_password=False),
            admin_url=base.render_as_string(hide_password=False),
        )
    finally:
        asyncio.run(
            run_as_superuser(
                admin_url,
                f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
                f"DROP ROLE IF EXISTS {service}",
                f"DROP ROLE IF EXISTS {owner}",
            )
        )
