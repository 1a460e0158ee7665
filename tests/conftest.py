"""Test harness: every test runs against a real database built by the real migrations,
once on SQLite and once on PostgreSQL, through real HTTP calls into the app.

PostgreSQL runs as production does (docs/audit-log.md, tests/production.py): the
migrations as the schema owner, the service as a NOINHERIT login role with
``CPR_DATABASE_ROLE=cpr_app``, never as a superuser. ``CPR_TEST_POSTGRES_URL``
(default: the trust-auth server on 127.0.0.1:5432) is the superuser that sets that
up; each run creates its own database and roles and drops them at the end.
Unreachable, the PostgreSQL half skips, except under CI=true where it fails.
"""

import asyncio
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.admin.service import create_client, create_organisation, create_user
from app.auth.keys import ensure_signing_key
from app.cli import upgrade_database
from app.config import Environment, Settings, get_settings
from app.db import create_engine, create_sessionmaker
from app.demo import years_ago
from app.identity.models import Organisation, OrganisationKind, Scope, UserRole
from app.main import create_app
from app.register.models import Category, RegisterEntry
from app.register.schemas import EntryCreate, Person
from app.register.service import Actor, create_entry, end_entry
from tests.production import APP_ROLE, asyncpg_dsn, production_database, run_as_superuser

# The browser tests' fixtures (chromium, site), for any module that drives Chromium.
pytest_plugins = ["tests.browser"]

POSTGRES_ADMIN_URL = os.environ.get(
    "CPR_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
ACTOR = "test:setup"


async def _postgres_reachable() -> str | None:
    try:
        conn = await asyncpg.connect(asyncpg_dsn(POSTGRES_ADMIN_URL), timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    await conn.close()
    return None


async def _postgres_admin(sql: str) -> None:
    await run_as_superuser(POSTGRES_ADMIN_URL, sql)


@dataclass(frozen=True)
class DatabaseUnderTest:
    url: str  # what the service connects with
    role: str | None  # CPR_DATABASE_ROLE
    owner_url: str  # what the migrations run as
    admin_url: str  # a superuser (or the file's owner): for tests that tamper with the store


@contextmanager
def _new_database(backend: str, directory: Path) -> Iterator[DatabaseUnderTest]:
    """A database of its own, set up as production's, dropped afterwards."""
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{directory / 'cpr.sqlite3'}"
        yield DatabaseUnderTest(url=url, role=None, owner_url=url, admin_url=url)
        return
    with production_database(POSTGRES_ADMIN_URL) as database:
        yield DatabaseUnderTest(
            url=database.service_url,
            role=APP_ROLE,
            owner_url=database.owner_url,
            admin_url=database.admin_url,
        )


def _require_postgres() -> None:
    problem = asyncio.run(_postgres_reachable())
    if problem is not None:
        message = f"PostgreSQL at {POSTGRES_ADMIN_URL} is unreachable ({problem})"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; under CI the PostgreSQL tests must run")
        pytest.skip(message + "; PostgreSQL tests skipped")


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":
        _require_postgres()
    return request.param


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """The shared server's superuser: for tests that deploy the service on it themselves
    (tests/deployment.py), in the production role set-up."""
    _require_postgres()
    return POSTGRES_ADMIN_URL


@pytest.fixture(scope="session")
def database(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DatabaseUnderTest]:
    with _new_database(backend, tmp_path_factory.mktemp("db")) as created:
        yield created


def _test_settings(
    database: DatabaseUnderTest, keys: Path, checkpoints: Path, **overrides: Any
) -> Settings:
    settings = Settings(
        environment=Environment.test,
        database_url=database.url,
        database_role=database.role,
        key_dir=keys,
        checkpoint_key_path=keys / "checkpoint.pem",
        checkpoint_dir=checkpoints,
        duty_contact_name="Test duty desk",
        duty_contact_phone="020 7946 0999",
        # The tests' webhook receivers listen on loopback, and one test names a host
        # that resolves nowhere (tests/security/test_webhook_targets.py shows what is
        # refused without this).
        webhook_allowed_hosts=frozenset({"127.0.0.1", "receiver.example.org"}),
        # The session's shared system clients make far more than a real client's 300
        # lookups a minute across the suite; the limits themselves are tested with
        # settings of their own (tests/security/test_limits.py).
        lookup_limit_per_client=1_000_000,
        # Small pools: the suite's apps and its two test workers share the server's
        # 100 connections.
        database_pool_size=5,
        **overrides,
    )
    upgrade_database(settings.model_copy(update={"database_url": database.owner_url}))
    return settings


@pytest.fixture(scope="session")
def settings(database: DatabaseUnderTest, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return _test_settings(
        database, tmp_path_factory.mktemp("keys"), tmp_path_factory.mktemp("checkpoints")
    )


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point the `cpr` command at the test database and keys, as the service's own
    environment would; settings are cached, so clear them."""
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    if settings.database_role is not None:
        monkeypatch.setenv("CPR_DATABASE_ROLE", settings.database_role)
    monkeypatch.setenv("CPR_KEY_DIR", str(settings.key_dir))
    monkeypatch.setenv("CPR_ENVIRONMENT", settings.environment.value)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@dataclass(frozen=True)
class FreshDatabase:
    settings: Settings
    database: DatabaseUnderTest


@pytest.fixture
def fresh(backend: str, tmp_path: Path) -> Iterator[FreshDatabase]:
    """A database of this test's own (for tests that tamper with it), with the
    background sequencer off so that the test drives sealing itself."""
    with _new_database(backend, tmp_path) as created:
        settings = _test_settings(
            created, tmp_path / "keys", tmp_path / "checkpoints", sealing_enabled=False
        )
        yield FreshDatabase(settings, created)


@pytest.fixture
def fresh_settings(fresh: FreshDatabase) -> Settings:
    return fresh.settings


@pytest.fixture(scope="session")
async def admin_sessionmaker(
    database: DatabaseUnderTest,
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions as a superuser (on SQLite: the file's owner), for tests that change the
    store as only an insider could, or set up what the service itself may not."""
    engine = create_engine(
        Settings(environment=Environment.test, database_url=database.admin_url), owner=True
    )
    yield create_sessionmaker(engine)
    await engine.dispose()


@pytest.fixture
async def fresh_admin_sessionmaker(
    fresh: FreshDatabase,
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """As admin_sessionmaker, for the test's own database."""
    engine = create_engine(
        Settings(environment=Environment.test, database_url=fresh.database.admin_url), owner=True
    )
    yield create_sessionmaker(engine)
    await engine.dispose()


@pytest.fixture(scope="session")
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture(scope="session")
def sessionmaker(app: FastAPI) -> async_sessionmaker[AsyncSession]:
    return app.state.sessionmaker


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@dataclass
class Principal:
    """A demo principal with its credentials and a token obtained through /oauth/token."""

    subject: str
    organisation: Organisation
    credentials: dict[str, str]
    token: str = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class World:
    """Organisations, principals and register entries shared by the tests of one database."""

    orgs: dict[str, Organisation] = field(default_factory=dict)
    principals: dict[str, Principal] = field(default_factory=dict)
    entries: dict[str, RegisterEntry] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Principal:
        return self.principals[name]


def person(nhs: str | None, given: str, family: str, born: date) -> Person:
    return Person(nhs_number=nhs, given_name=given, family_name=family, date_of_birth=born)


# Fictional children. NHS numbers are valid (modulus 11) numbers from the 999 test range.
NHS = {
    "neglect": "9991000011",
    "multi": "9991000038",
    "mother": "9991000046",
    "ended_own": "9991000054",
    "ended_other": "9991000062",
    "adult": "9991000070",
    "never": "9991000089",
    "dup_a": "9991000097",
    "dup_b": "9991000100",
}
BORN = {
    key: years_ago(date.today(), years, 45)
    for key, years in {"neglect": 6, "multi": 9, "ended_own": 4, "ended_other": 5, "dup": 3}.items()
}
BORN["adult"] = years_ago(date.today(), 18, 20)
BORN["mother"] = date(1997, 3, 9)


async def _token(http: httpx.AsyncClient, data: dict[str, str]) -> str:
    response = await http.post("/oauth/token", data=data)
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


@pytest.fixture(scope="session")
async def world(
    app: FastAPI, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings
) -> World:
    world = World()
    today = date.today()
    async with sessionmaker() as session:
        await ensure_signing_key(session, settings.key_dir, actor=ACTOR)
        specs = {
            "authority_a": (OrganisationKind.local_authority, "020 7946 0101"),
            "authority_b": (OrganisationKind.local_authority, "020 7946 0102"),
            "hospital": (OrganisationKind.emergency_department, "020 7946 0201"),
            "edt": (OrganisationKind.out_of_hours_social_care, "020 7946 0301"),
            "police": (OrganisationKind.police, "020 7946 0401"),
            "operator": (OrganisationKind.service_operator, "020 7946 0901"),
        }
        for key, (kind, phone) in specs.items():
            world.orgs[key] = create_organisation(
                session,
                actor=ACTOR,
                kind=kind,
                name=f"Test {key} {uuid.uuid4().hex[:6]}",
                ods_code=None,
                contact_name=f"{key} safeguarding",
                contact_phone=phone,
            )
        await session.flush()

        for key, org in (("hospital_client", "hospital"), ("police_client", "police")):
            client, secret = create_client(
                session,
                actor=ACTOR,
                organisation=world.orgs[org],
                name=f"{key} system",
                scopes=frozenset({Scope.lookup}),
            )
            world.principals[key] = Principal(
                f"client:{client.id}",
                world.orgs[org],
                {
                    "grant_type": "client_credentials",
                    "client_id": client.id,
                    "client_secret": secret,
                },
            )
        for key, org, role in (
            ("duty_officer", "edt", UserRole.duty_officer),
            ("custodian_a", "authority_a", UserRole.custodian),
            ("custodian_b", "authority_b", UserRole.custodian),
            ("operator", "operator", UserRole.operator),
        ):
            password = secrets.token_urlsafe(12)
            username = f"{key}-{uuid.uuid4().hex[:6]}"
            user = create_user(
                session,
                actor=ACTOR,
                organisation=world.orgs[org],
                username=username,
                full_name=f"Test {key}",
                role=role,
                password=password,
            )
            await session.flush()
            world.principals[key] = Principal(
                f"user:{user.id}",
                world.orgs[org],
                {"grant_type": "password", "username": username, "password": password},
            )

        def plan(*categories: Category, child: Person | None = None, **extra: Any) -> EntryCreate:
            return EntryCreate(
                child=child,
                categories=list(categories),
                plan_start=today - timedelta(days=40),
                lead_professional="Lead Professional Name",
                notes="custodian-only note",
                **extra,
            )

        a, b = world.orgs["authority_a"].id, world.orgs["authority_b"].id
        specs_entries = {
            "neglect": (
                a,
                plan(
                    Category.neglect,
                    child=person(NHS["neglect"], "Amara", "Quinn-Lowe", BORN["neglect"]),
                ),
            ),
            "multi": (
                a,
                plan(
                    Category.emotional_abuse,
                    Category.neglect,
                    child=person(NHS["multi"], "Zoë", "Dúbois", BORN["multi"]),
                ),
            ),
            "unborn": (
                a,
                plan(
                    Category.physical_abuse,
                    mother=person(NHS["mother"], "Hana", "Petrova", BORN["mother"]),
                    expected_delivery_date=today + timedelta(days=50),
                ),
            ),
            "ended_own": (
                a,
                plan(
                    Category.neglect,
                    child=person(NHS["ended_own"], "Tobias", "Reed", BORN["ended_own"]),
                ),
            ),
            "ended_other": (
                b,
                plan(
                    Category.sexual_abuse,
                    child=person(NHS["ended_other"], "Maisie", "Clarke", BORN["ended_other"]),
                ),
            ),
            "adult": (
                a,
                plan(Category.neglect, child=person(NHS["adult"], "Kai", "Morgan", BORN["adult"])),
            ),
            "dup_a": (
                a,
                plan(Category.neglect, child=person(NHS["dup_a"], "Ruby", "Shah", BORN["dup"])),
            ),
            "dup_b": (
                b,
                plan(
                    Category.physical_abuse, child=person(NHS["dup_b"], "Ruby", "Shah", BORN["dup"])
                ),
            ),
            "no_nhs": (
                a,
                plan(Category.emotional_abuse, child=person(None, "Idris", "Wynne", BORN["dup"])),
            ),
        }
        for key, (authority_id, data) in specs_entries.items():
            world.entries[key] = create_entry(
                session, actor=Actor(ACTOR), authority_id=authority_id, data=data
            )
        await session.flush()
        for key in ("ended_own", "ended_other"):
            end_entry(
                session,
                world.entries[key],
                actor=Actor(ACTOR),
                ended_on=today - timedelta(days=3),
                reason="no_longer_at_risk",
            )
        await session.commit()

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        for principal in world.principals.values():
            principal.token = await _token(http, principal.credentials)
    return world
