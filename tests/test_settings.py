"""Settings refuse to start an unsafe production service."""

from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from app.config import Environment, Settings
from app.main import create_app


def test_production_refuses_to_start_without_a_signing_key(tmp_path: Path) -> None:
    settings = Settings(environment=Environment.production, key_dir=tmp_path)
    with pytest.raises(ValueError, match="no signing key"):
        create_app(settings)


def test_production_refuses_a_placeholder_database_password(tmp_path: Path) -> None:
    (tmp_path / "k.pem").write_text("key")
    with pytest.raises(ValidationError, match="placeholder"):
        Settings(
            environment=Environment.production,
            key_dir=tmp_path,
            database_url="postgresql+asyncpg://cpr:changeme@db/cpr",
        )


def test_production_refuses_to_start_without_a_checkpoint_key(tmp_path: Path) -> None:
    (tmp_path / "k.pem").write_text("key")
    settings = Settings(
        environment=Environment.production,
        key_dir=tmp_path,
        checkpoint_key_path=tmp_path / "missing.pem",
    )
    with pytest.raises(ValueError, match="no checkpoint key"):
        create_app(settings)


def test_production_on_postgresql_requires_the_role_to_act_as(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="CPR_DATABASE_ROLE is required"):
        Settings(
            environment=Environment.production,
            key_dir=tmp_path,
            database_url="postgresql+asyncpg://cpr_service:s3cr3t-from-vault@db/cpr",
        )


def test_production_starts_with_keys_and_a_real_password(tmp_path: Path) -> None:
    (tmp_path / "k.pem").write_text("key")
    (tmp_path / "checkpoint.key").write_text("key")
    settings = Settings(
        environment=Environment.production,
        key_dir=tmp_path,
        checkpoint_key_path=tmp_path / "checkpoint.key",
        database_url="postgresql+asyncpg://cpr:s3cr3t-from-vault@db/cpr",
        database_role="cpr_app",
    )
    settings.check_keys_to_serve()
    assert settings.environment is Environment.production


def test_tokens_may_not_live_longer_than_fifteen_minutes() -> None:
    with pytest.raises(ValidationError):
        Settings(token_ttl_seconds=3600)


def test_development_runs_without_keys_yet(tmp_path: Path) -> None:
    assert Settings(key_dir=tmp_path / "none").environment is Environment.development


async def test_production_serves_no_interactive_docs(tmp_path: Path) -> None:
    """/docs and /redoc load their scripts from a CDN, outside the site's CSP."""
    (tmp_path / "k.pem").write_text("key")
    (tmp_path / "checkpoint.key").write_text("key")
    production = create_app(
        Settings(
            environment=Environment.production,
            key_dir=tmp_path,
            checkpoint_key_path=tmp_path / "checkpoint.key",
        )
    )
    development = create_app(Settings(key_dir=tmp_path))
    for app, expected in ((production, 404), (development, 200)):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            assert (await http.get("/docs")).status_code == expected
            assert (await http.get("/redoc")).status_code == expected
            assert (await http.get("/openapi.json")).status_code == 200
