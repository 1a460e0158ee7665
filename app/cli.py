"""The `cpr` command: database, demo bootstrap, keys, OpenAPI."""

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings, get_settings
from app.db import create_engine, create_sessionmaker

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent


def _with_session(settings: Settings, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    async def run() -> T:
        engine = create_engine(settings)
        try:
            async with create_sessionmaker(engine)() as session:
                return await work(session)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def upgrade_database(settings: Settings) -> None:
    from alembic import command
    from alembic.config import Config

    if settings.is_sqlite:
        Path(settings.database_url.split("///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.attributes["settings"] = settings
    command.upgrade(config, "head")


@click.group()
def main() -> None:
    """cp-register: the child protection plan lookup service."""


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply every migration (SQLite file or PostgreSQL, from DATABASE_URL)."""
    upgrade_database(get_settings())
    click.echo("database is at the latest schema")


@main.group()
def demo() -> None:
    """Demonstration data."""


@demo.command("bootstrap")
@click.option(
    "--credentials",
    type=click.Path(path_type=Path),
    default=Path("var/demo-credentials.json"),
    show_default=True,
)
def demo_bootstrap(credentials: Path) -> None:
    """Create demo organisations, principals, keys and register entries (idempotent)."""
    from app.auth.keys import ensure_signing_key
    from app.demo import ACTOR, bootstrap

    settings = get_settings()

    saved = json.loads(credentials.read_text()) if credentials.exists() else {}

    async def work(session: AsyncSession) -> dict[str, Any]:
        await ensure_signing_key(session, settings.key_dir, actor=ACTOR)
        return await bootstrap(session, saved)

    created = _with_session(settings, work)
    credentials.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(credentials, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump(created, file, indent=2)
        file.write("\n")
    credentials.chmod(0o600)
    click.echo(f"Demo credentials (also in {credentials}, mode 600):")
    click.echo(json.dumps(created, indent=2))


@main.group()
def keys() -> None:
    """Token signing keys."""


@keys.command("rotate")
@click.option(
    "--overlap-seconds",
    type=int,
    default=None,
    help="How long the old key keeps verifying (default: token lifetime + leeway).",
)
def keys_rotate(overlap_seconds: int | None) -> None:
    """Add a new signing key; the current one retires after the overlap window."""
    from app.auth.keys import rotate_signing_key

    settings = get_settings()
    overlap = overlap_seconds
    if overlap is None:
        overlap = settings.token_ttl_seconds + settings.token_leeway_seconds

    async def work(session: AsyncSession) -> str:
        key = await rotate_signing_key(
            session, settings.key_dir, overlap_seconds=overlap, actor="cli:keys-rotate"
        )
        await session.commit()
        return key.kid

    kid = _with_session(settings, work)
    click.echo(f"new signing key {kid}; private key in {settings.key_dir / (kid + '.pem')}")


@main.command("openapi")
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=ROOT / "openapi" / "openapi.json",
    show_default=True,
)
def openapi(output: Path) -> None:
    """Write the OpenAPI document the app serves."""
    from app.main import create_app

    document = create_app(get_settings()).openapi()
    output.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    click.echo(f"wrote {output}")
