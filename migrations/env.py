"""Alembic environment: the same migrations build SQLite and PostgreSQL."""

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from app.audit import models as _audit_models  # noqa: F401
from app.auth import models as _auth_models  # noqa: F401
from app.config import get_settings
from app.db import Base, create_engine
from app.identity import models as _identity_models  # noqa: F401  (register tables)
from app.notifications import models as _notification_models  # noqa: F401
from app.register import models as _register_models  # noqa: F401

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    settings = context.config.attributes.get("settings") or get_settings()
    # Migrations run as the schema owner, never as the service's restricted role.
    engine = create_engine(settings, owner=True)
    async with engine.connect() as connection:
        await connection.run_sync(_run)
        await connection.commit()
    await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `cpr db upgrade`")
asyncio.run(_run_async())
