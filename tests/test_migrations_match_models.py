"""The models say what the migrations build: autogenerate, run against a database the
migrations built (on SQLite and on PostgreSQL), proposes nothing. A model changed
without its migration, or a migration without its model, fails here."""

import warnings
from collections.abc import Callable
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.schema import CreateIndex

from app.db import Base, create_engine
from tests.conftest import FreshDatabase

# What autogenerate finds that models cannot say. Triggers, functions, grants and the
# ENABLE ALWAYS of the audit log's guards are not compared by alembic at all, so they
# need nothing here. Nothing else is left out.
EXPECTED: list[Any] = []


def _proposals(connection: Connection) -> list[Any]:
    # Tables, columns, their types and nullability, indexes (names, columns, uniqueness;
    # a partial one's WHERE: the next test), unique and foreign key constraints with
    # their names. Not server defaults
    # (alembic's default): the one there is, audit_unsealed.queued_at's, is the
    # database's clock and written by a trigger (migration 0008), never by the models.
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    with warnings.catch_warnings():
        # SQLite's reflection cannot read an expression index (the NHS number asked,
        # migration 0012): the next test compares it as the database spells it.
        warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based")
        warnings.filterwarnings("ignore", "autogenerate skipping metadata-specified expression")
        return compare_metadata(context, Base.metadata)


# How the database itself spells an index it holds.
_DEFINITION = {
    "sqlite": "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = :name",
    "postgresql": "SELECT pg_get_indexdef(CAST(:name AS regclass))",
}
PROBE = "ix_cpr_drift_probe"


def _index_definitions(connection: Connection) -> dict[str, tuple[str, str]]:
    """Every index the models declare: (as the migrations built it, as the models would
    build it). autogenerate compares an index's name, columns and uniqueness, not a
    partial index's WHERE: so each model index is built again under another name, in a
    transaction rolled back, and the database's own spelling of both is compared."""
    definition = text(_DEFINITION[connection.dialect.name])
    found: dict[str, tuple[str, str]] = {}
    for table in Base.metadata.sorted_tables:
        for index in table.indexes:
            assert index.name is not None
            migrated = connection.scalar(definition, {"name": index.name}) or "(missing)"
            ddl = str(CreateIndex(index).compile(dialect=connection.dialect))
            connection.exec_driver_sql(ddl.replace(index.name, PROBE, 1))
            modelled = connection.scalar(definition, {"name": PROBE})
            connection.exec_driver_sql(f"DROP INDEX {PROBE}")
            found[index.name] = (" ".join(migrated.split()), " ".join(modelled.split()))
    connection.rollback()
    return {
        name: (migrated, modelled.replace(PROBE, name))
        for name, (migrated, modelled) in found.items()
    }


async def _as_owner(fresh: FreshDatabase, compare: Callable[[Connection], Any]) -> Any:
    # As the schema owner, as the migrations ran: the service's role may not see all.
    settings = fresh.settings.model_copy(update={"database_url": fresh.database.owner_url})
    engine = create_engine(settings, owner=True)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(compare)
    finally:
        await engine.dispose()


async def test_autogenerate_proposes_nothing(fresh: FreshDatabase) -> None:
    assert await _as_owner(fresh, _proposals) == EXPECTED


async def test_every_index_is_built_as_its_model_declares_it(fresh: FreshDatabase) -> None:
    definitions = await _as_owner(fresh, _index_definitions)
    assert "ix_audit_events_referrals_principal_limit_time" in definitions  # partial
    assert {name: pair for name, pair in definitions.items() if pair[0] != pair[1]} == {}
