"""`make bench`: the audited lookup under load, beside its floor and its ceiling.

For each backend (PostgreSQL in a throwaway database, SQLite in a temporary
file): migrate, bootstrap the demo, seed a register of BENCH_ENTRIES entries,
then drive wrk (bench/lookup.lua) at each of BENCH_CONNECTIONS against

- the service as deployed (uvicorn, BENCH_WORKERS workers): POST /v1/lookups
  with sealing on, and GET /healthz (the framework floor);
- the same service with sealing off (CPR_SEALING_ENABLED=false);
- the same service with the volume limits counted without their per-client and
  per-enquirer locks (CPR_LOOKUP_LIMITS_SERIALISED=false): what exact limits cost;
- the ceiling (bench/ceiling.py): one indexed SELECT and one INSERT + COMMIT
  through the raw driver, nothing else.

On PostgreSQL everything runs as production does (docs/audit-log.md, "Setting up
the PostgreSQL roles"; tests/production.py): the database is created with its owner
and the service's NOINHERIT login role; `cpr db upgrade` runs as the owner; `cpr demo
bootstrap`, `cpr audit keygen`, the service (CPR_ENVIRONMENT=production), the bench's
own seeding, clients and tokens, and the ceiling log in as the login role acting as
``cpr_app``. Only the measurements and VACUUM ANALYZE use the superuser.

Each lookup run uses BENCH_CLIENTS new system clients of the demo emergency
department, each with its own token, cycled request by request (see
new_client_tokens). Each run also records the CPU the workers and PostgreSQL
spent per request, the PostgreSQL connections opened, and how busy other
processes kept the machine. It checks that every 200 wrk saw has its audit
event, reads each worker's resident memory after the load, times
`cpr register import` when it exists, and prints one table per backend, also
written to var/bench/results.md (docs/performance.md reads them).

Settings (environment): BENCH_DURATION (seconds per run, 10), BENCH_WARMUP (2),
BENCH_CONNECTIONS (1,8,32), BENCH_WORKERS (2), BENCH_ENTRIES (50000),
BENCH_BACKENDS (postgresql,sqlite), BENCH_POSTGRES_URL (a superuser of the
trust-auth server on 127.0.0.1:5432: it creates the database and its roles),
BENCH_PROFILE (1: also profile one loaded worker with py-spy), BENCH_CLIENTS (200:
system clients per lookup run; 1 gives the worst case, one client making every
lookup), BENCH_HISTORY (20000: past lookup events seeded, and sealed, before the
runs, so that the log is not empty as in service).
"""

import asyncio
import contextlib
import csv
import json
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from app.admin.service import create_client
from app.audit.models import AuditEvent, AuditUnsealed
from app.auth.hashing import hash_secret
from app.auth.keys import KeyRing
from app.auth.models import AccessToken
from app.auth.tokens import issue_token
from app.config import Settings
from app.db import create_engine, create_sessionmaker
from app.demo import CLIENTS
from app.identity.models import Client, Organisation, Scope
from app.register.csvformat import CATEGORY_SEPARATOR, IMPORT_COLUMNS
from app.register.models import Category
from bench.ceiling import CEILING_TABLE, CEILING_TABLE_SQL
from bench.load import WrkResult, run_wrk
from bench.probes import CpuSnapshot
from bench.profile import summarise_collapsed
from bench.report import (
    CEILING,
    HEALTHZ,
    LIMITS_UNLOCKED,
    SEALING_OFF,
    SEALING_ON,
    AuditCheck,
    BackendReport,
    Run,
    seeded_line,
    write_results,
)
from bench.seed import (
    CATEGORY_COUNT_WEIGHTS,
    FAMILY_NAMES,
    GIVEN_NAMES,
    NO_NHS_NUMBER_SHARE,
    UNBORN_SHARE,
    SeededRegister,
    analyse,
    nhs_numbers,
    seed_audit_history,
    seed_register,
)
from bench.servers import BIN, Server
from tests.production import APP_ROLE, run_as_superuser, setup_statements

ROOT = Path(__file__).resolve().parent.parent
OUTPUT_DIR = ROOT / "var" / "bench"
ON_PLAN_SHARE = 0.3  # of the lookups; the rest ask about a child with no live plan
BODY_COUNT = 20_000
NEVER_REGISTERED = 10_000
ENQUIRERS = [
    {"id": f"C{100000 + n}", "name": f"Dr Bench {n}", "role": "ED registrar"} for n in range(20)
]
ED_ORGANISATION = CLIENTS["emergency_department_client"][0]
ACTOR = "bench:run"


@dataclass(frozen=True)
class BenchConfig:
    duration: float
    warmup: float
    connections: tuple[int, ...]
    workers: int
    entries: int
    backends: tuple[str, ...]
    postgres_url: str
    profile: bool
    clients: int
    history: int

    @classmethod
    def from_environment(cls) -> "BenchConfig":
        env = os.environ.get
        return cls(
            duration=float(env("BENCH_DURATION", "10")),
            warmup=float(env("BENCH_WARMUP", "2")),
            connections=tuple(int(c) for c in env("BENCH_CONNECTIONS", "1,8,32").split(",")),
            workers=int(env("BENCH_WORKERS", "2")),
            entries=int(env("BENCH_ENTRIES", "50000")),
            backends=tuple(env("BENCH_BACKENDS", "postgresql,sqlite").split(",")),
            postgres_url=env(
                "BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
            ),
            profile=env("BENCH_PROFILE", "0") == "1",
            clients=int(env("BENCH_CLIENTS", "200")),
            history=int(env("BENCH_HISTORY", "20000")),
        )


# --- databases ---------------------------------------------------------------------------


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass(frozen=True)
class BenchDatabase:
    """A throwaway database and who connects to it, as in production (docs/audit-log.md).

    On PostgreSQL, the roles tests/production.py creates: the schema's owner runs
    `cpr db upgrade`; the service and every other `cpr` command log in as a NOINHERIT
    member of ``cpr_app`` and act as ``cpr_app`` (CPR_DATABASE_ROLE); a superuser
    takes the measurements and does what only a superuser or the owner may (VACUUM
    ANALYZE, the ceiling's scratch table). On SQLite, one file for all four.
    """

    service_url: str  # the service's login role (with CPR_DATABASE_ROLE=role)
    role: str | None  # CPR_DATABASE_ROLE; None on SQLite
    owner_url: str  # the schema's owner: `cpr db upgrade`
    admin_url: str  # a superuser: measurements and maintenance, never the service


@contextlib.asynccontextmanager
async def production_database(admin_url: str) -> AsyncIterator[BenchDatabase]:
    """tests.production.production_database for the bench's event loop: the same
    operator's set-up (``setup_statements``), with names of the bench's own."""
    tag = secrets.token_hex(4)
    name, owner = f"cpr_bench_{tag}", f"cpr_bench_owner_{tag}"
    service = f"cpr_bench_service_{tag}"
    await run_as_superuser(admin_url, *setup_statements(name, owner, service))
    base = make_url(admin_url).set(database=name)
    try:
        yield BenchDatabase(
            service_url=base.set(username=service).render_as_string(hide_password=False),
            role=APP_ROLE,
            owner_url=base.set(username=owner).render_as_string(hide_password=False),
            admin_url=base.render_as_string(hide_password=False),
        )
    finally:
        await run_as_superuser(
            admin_url,
            f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
            f"DROP ROLE IF EXISTS {service}",
            f"DROP ROLE IF EXISTS {owner}",
        )


@contextlib.asynccontextmanager
async def throwaway_database(
    backend: str, config: BenchConfig, tmp: Path
) -> AsyncIterator[BenchDatabase]:
    """A database of its own: a temporary SQLite file, or cpr_bench_<random> with its
    owner and login roles (production's set-up), dropped after."""
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp / 'cpr-bench.sqlite3'}"
        yield BenchDatabase(service_url=url, role=None, owner_url=url, admin_url=url)
        return
    async with production_database(config.postgres_url) as database:
        yield database


def setup_line(database: BenchDatabase, config: BenchConfig) -> str:
    """Who connects as whom, for the report."""
    if database.role is None:
        return f"Service: {config.workers} uvicorn workers on a SQLite file of its own."
    service = make_url(database.service_url).username
    owner = make_url(database.owner_url).username
    return (
        f"Service as in production (docs/audit-log.md): {config.workers} uvicorn workers, "
        f"CPR_ENVIRONMENT=production, logged in as {service} (NOINHERIT) acting as "
        f"{database.role} (CPR_DATABASE_ROLE), as are `cpr demo bootstrap`, "
        f"`cpr audit keygen`, the seed and the ceiling; migrations as the owner {owner}; "
        "the measurements as a superuser."
    )


def admin_engine(database: BenchDatabase) -> AsyncEngine:
    """The superuser's engine (the file itself on SQLite): no role, no timeouts."""
    return create_engine(Settings(database_url=database.admin_url), owner=True)


@dataclass(frozen=True)
class Engines:
    """The bench's two ways into the database under test."""

    # acts as the service's role, as the service would: the seed, clients and tokens
    writer: AsyncEngine
    # a superuser: the measurements (audit check, pg_stat_database, the sealing queue)
    admin: AsyncEngine


async def postgres_unreachable(config: BenchConfig) -> str | None:
    try:
        connection = await asyncpg.connect(_asyncpg_dsn(config.postgres_url), timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    await connection.close()
    return None


async def lookup_outcomes(engine: AsyncEngine) -> dict[str, int]:
    """Lookup audit events that answered (not refused), by outcome."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(AuditEvent.outcome, func.count())
            .where(AuditEvent.event_type == "lookup", AuditEvent.outcome != "refused")
            .group_by(AuditEvent.outcome)
        )
        return {outcome: int(count) for outcome, count in rows}


async def postgres_sessions(engine: AsyncEngine) -> int | None:
    """Connections ever opened to this PostgreSQL database (None on SQLite)."""
    if engine.dialect.name != "postgresql":
        return None
    async with engine.connect() as connection:
        sessions = await connection.scalar(
            text("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
        )
        return int(sessions or 0)


async def other_database_xacts(engine: AsyncEngine) -> dict[int, int] | None:
    """Transactions committed or rolled back so far in each of the server's other
    databases, by oid."""
    if engine.dialect.name != "postgresql":
        return None
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT datid, xact_commit + xact_rollback FROM pg_stat_database "
                "WHERE datname IS NOT NULL AND datname <> current_database()"
            )
        )
        return {int(datid): int(xacts) for datid, xacts in rows}


def xacts_between(before: dict[int, int] | None, after: dict[int, int] | None) -> int | None:
    """Transactions the other databases ran between two readings. A database dropped
    in between (another project's throwaway test database, say) is left out: its
    counts go with it, and a plain sum would come out negative. One created in between
    counts whole."""
    if before is None or after is None:
        return None
    return sum(xacts - before.get(datid, 0) for datid, xacts in after.items())


async def unsealed_count(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(select(func.count()).select_from(AuditUnsealed)) or 0)


# --- the service -------------------------------------------------------------------------


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "cpr"), *args], env=env, capture_output=True, text=True, check=False
    )


def prepare_database(database: BenchDatabase, env: dict[str, str], tmp: Path) -> None:
    """Migrate, bootstrap the demo, and create the checkpoint key, as an operator would
    (docs/audit-log.md): `cpr db upgrade` as the schema's owner, everything else with
    the service's ``env`` (its login role acting as CPR_DATABASE_ROLE).

    The key is made before the service starts: left to the workers, each finds it
    missing and tries to create it, and the one that loses the race fails to start
    (app/audit/chain.py, CheckpointSigner.from_file), which stops uvicorn.

    These steps run without CPR_ENVIRONMENT=production: in production the settings
    refuse to load until the signing and checkpoint keys exist, and these steps are
    what create them (`cpr keys rotate` and `cpr audit keygen` refuse just the same).
    """
    credentials = tmp / "demo-credentials.json"
    setup = {key: value for key, value in env.items() if key != "CPR_ENVIRONMENT"}
    owner = {key: value for key, value in setup.items() if key != "CPR_DATABASE_ROLE"}
    owner["DATABASE_URL"] = database.owner_url
    for step_env, step in (
        (owner, ["db", "upgrade"]),
        (setup, ["demo", "bootstrap", "--credentials", str(credentials)]),
        (setup, ["audit", "keygen"]),
    ):
        if (done := cli(step_env, *step)).returncode != 0:
            raise RuntimeError(f"cpr {' '.join(step)} failed:\n{done.stderr}")


def service_env(database: BenchDatabase, tmp: Path, **overrides: str) -> dict[str, str]:
    """The service's environment. On PostgreSQL, production's: the login role acting
    as ``cpr_app``, and CPR_ENVIRONMENT=production (as the Dockerfile sets it), in which
    the service refuses to start acting as a role that could change the log."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("CPR_") and key != "DATABASE_URL"
    }
    production = (
        {"CPR_DATABASE_ROLE": database.role, "CPR_ENVIRONMENT": "production"}
        if database.role is not None
        else {}
    )
    return env | {
        "DATABASE_URL": database.service_url,
        **production,
        "CPR_KEY_DIR": str(tmp / "keys"),
        "CPR_CHECKPOINT_KEY_PATH": str(tmp / "keys" / "audit-checkpoint.ed25519.pem"),
        "CPR_CHECKPOINT_DIR": str(tmp / "checkpoints"),
        "CPR_LOOKUP_LIMIT_PER_CLIENT": "100000000",
        "CPR_LOOKUP_LIMIT_PER_ENQUIRER": "100000000",
        "CPR_LOG_LEVEL": "WARNING",
        **overrides,
    }


async def new_client_token(
    engine: AsyncEngine, base_url: str, name: str, *, http: httpx.AsyncClient | None = None
) -> str:
    """A token for a new system client of the demo emergency department.

    Each run gets a client of its own: the volume limits count a client's lookups
    in the audit log over a sliding window (15 minutes for an enquirer), and that
    count costs more the more lookups the client made, so a client shared between
    runs would make each run slower than the one before.
    """
    async with create_sessionmaker(engine)() as session:
        organisation = await session.scalar(
            select(Organisation).where(Organisation.name == ED_ORGANISATION)
        )
        if organisation is None:
            raise RuntimeError(f"{ED_ORGANISATION!r} is missing: run `cpr demo bootstrap` first")
        client, secret = create_client(
            session,
            actor=ACTOR,
            organisation=organisation,
            name=name,
            scopes=frozenset({Scope.lookup}),
        )
        await session.commit()
    async with contextlib.AsyncExitStack() as stack:
        if http is None:
            http = await stack.enter_async_context(httpx.AsyncClient(base_url=base_url, timeout=30))
        response = await http.post(
            "/oauth/token", data={"grant_type": "client_credentials"}, auth=(client.id, secret)
        )
        response.raise_for_status()
        return str(response.json()["access_token"])


# The bench's own writes as the service's role (clients, tokens, the seeded register
# and history) are batches of thousands of rows: more than the service's statement
# timeout allows a statement, which is sized for one request's.
SEEDING_STATEMENT_TIMEOUT_SECONDS = 120.0


def service_settings(env: dict[str, str], **overrides: float) -> Settings:
    """The settings the service started with ``env`` reads (those the bench needs): an
    engine made with them connects as the service does, acting as its role."""
    return Settings(
        database_url=env["DATABASE_URL"],
        database_role=env.get("CPR_DATABASE_ROLE"),
        key_dir=Path(env["CPR_KEY_DIR"]),
        checkpoint_key_path=Path(env["CPR_CHECKPOINT_KEY_PATH"]),
        checkpoint_dir=Path(env["CPR_CHECKPOINT_DIR"]),
        **overrides,
    )


def seeding_engine(env: dict[str, str]) -> AsyncEngine:
    """An engine acting as the service's role (SEEDING_STATEMENT_TIMEOUT_SECONDS)."""
    return create_engine(
        service_settings(env, database_statement_timeout_seconds=SEEDING_STATEMENT_TIMEOUT_SECONDS)
    )


async def new_client_tokens(
    engine: AsyncEngine, key_dir: Path, name: str, count: int, path: Path
) -> Path:
    """``count`` new system clients of the demo emergency department and a token for
    each, one a line in ``path`` (wrk cycles through them, bench/lookup.lua).

    Many clients, as many hospitals and police forces would be: the volume limits
    count each client's lookups over its own sliding window, so one client making
    every lookup would have each lookup count the run's thousands of lookups before
    it, where in service a client's count stops at its limit (300 a minute). The
    clients are inserted with one shared secret hash and their tokens issued here the
    way POST /oauth/token issues them (signed with the service's key, ``jti``
    recorded as issued): a slow hash and a sign-in for each would take minutes.
    """
    settings = Settings(database_url=engine.url.render_as_string(False), key_dir=key_dir)
    sessionmaker = create_sessionmaker(engine)
    keyring = KeyRing(sessionmaker, key_dir)
    secret_hash = hash_secret(secrets.token_urlsafe(32))
    async with sessionmaker() as session:
        organisation = await session.scalar(
            select(Organisation).where(Organisation.name == ED_ORGANISATION)
        )
        if organisation is None:
            raise RuntimeError(f"{ED_ORGANISATION!r} is missing: run `cpr demo bootstrap` first")
        tokens = []
        for n in range(count):
            client = Client(
                id=f"cpr-{secrets.token_hex(8)}",
                organisation_id=organisation.id,
                name=f"{name} #{n + 1}",
                secret_hash=secret_hash,
                scopes=[Scope.lookup.value],
                active=True,
            )
            session.add(client)
            subject = f"client:{client.id}"
            issued = await issue_token(
                keyring,
                settings,
                subject=subject,
                organisation_id=str(organisation.id),
                scopes=[Scope.lookup.value],
            )
            session.add(
                AccessToken(
                    jti=issued.token_id,
                    subject=subject,
                    expires_at=datetime.fromtimestamp(issued.expires_at, UTC),
                )
            )
            tokens.append(issued.token)
        await session.commit()
    await asyncio.to_thread(path.write_text, "".join(f"{token}\n" for token in tokens))
    return path


def write_bodies(path: Path, seeded: SeededRegister) -> None:
    """Lookup bodies, one JSON document a line: ON_PLAN_SHARE on a plan, in random order."""
    rng = random.Random(7)
    with path.open("w") as out:
        for n in range(BODY_COUNT):
            numbers = seeded.on_plan if rng.random() < ON_PLAN_SHARE else seeded.not_on_plan
            body = {
                "subject": {"nhs_number": rng.choice(numbers)},
                "purpose": "unscheduled_care",
                "reason": "attended ED with unexplained bruising (benchmark)",
                "enquirer": ENQUIRERS[n % len(ENQUIRERS)],
            }
            out.write(json.dumps(body, separators=(",", ":")) + "\n")


async def seed_for_lookups(
    engines: Engines, config: BenchConfig, env: dict[str, str], tmp: Path, *, history: int
) -> tuple[SeededRegister, Path]:
    """What a lookup run needs in its database: the register (BENCH_ENTRIES), ``history``
    past lookups sealed by the service's sequencer, both analysed; and the bodies file."""
    seeded = await seed_register(
        engines.writer, entries=config.entries, never_registered=NEVER_REGISTERED
    )
    await analyse(engines.admin)
    print(f"  {seeded_line(seeded)}", flush=True)
    took = await seed_audit_history(engines.writer, service_settings(env), events=history)
    await analyse(engines.admin)
    print(f"  seeded {history:,} past lookup events, sealed, in {took:.1f} s", flush=True)
    bodies = tmp / "bodies.jsonl"
    write_bodies(bodies, seeded)
    return seeded, bodies


def service_server(config: BenchConfig, env: dict[str, str], log_path: Path) -> Server:
    """The service as deployed (uvicorn, BENCH_WORKERS workers) with ``env``."""
    return Server(
        ["app.main:create_app", "--factory"],
        workers=config.workers,
        env=env,
        ready_path="/readyz",
        log_path=log_path,
    )


# --- scenarios ---------------------------------------------------------------------------


async def measured_run(
    scenario: str,
    connections: int,
    server: Server,
    engine: AsyncEngine,
    url: str,
    *,
    duration: float,
    bodies: Path | None = None,
    tokens: Path | None = None,
    watch_sealing: bool = False,
) -> Run:
    """One wrk run, with the CPU the server's workers and PostgreSQL spent on it, the
    connections PostgreSQL opened for it, and (``watch_sealing``) how far sealing lagged,
    read through ``engine`` (the superuser's)."""
    sessions = await postgres_sessions(engine)
    others = await other_database_xacts(engine)
    before = CpuSnapshot.take(server)
    result = await run_wrk(
        url, connections=connections, duration_seconds=duration, bodies=bodies, tokens=tokens
    )
    after = CpuSnapshot.take(server)
    sealing = await _sealing_catch_up(engine) if watch_sealing else None
    await asyncio.sleep(1)  # a pause between runs, which also lets backends report stats
    sessions_after = await postgres_sessions(engine)
    others_after = await other_database_xacts(engine)
    on_postgres = sessions is not None and sessions_after is not None
    return Run(
        scenario,
        connections,
        result,
        server_cpu_seconds=after.server - before.server,
        database_cpu_seconds=after.database - before.database if on_postgres else None,
        sessions_opened=sessions_after - sessions if on_postgres else None,
        sealing=sealing,
        other_cores=max(0.0, after.others_user - before.others_user) / result.seconds,
        other_database_xacts=xacts_between(others, others_after),
    )


async def lookup_runs(
    report: BackendReport,
    config: BenchConfig,
    service: Server,
    scenario: str,
    bodies: Path,
    engines: Engines,
    key_dir: Path,
) -> tuple[int, int]:
    """Warm-up, then one run per connection count; 200s and unanswered, summed over all."""
    answered = unanswered = 0
    url = f"{service.base_url}/v1/lookups"
    # (connections, seconds, reported): a warm-up first, counted for the audit check only
    # Warm-up at the highest concurrency: the pools grow to what the runs need, as in a
    # service that has been up a while, and the first measured run does not pay for it.
    plan = [(max(config.connections), config.warmup, False)] if config.warmup > 0 else []
    plan += [(connections, config.duration, True) for connections in config.connections]
    for connections, duration, reported in plan:
        name = f"bench {scenario}, {connections} connections{'' if reported else ' (warm-up)'}"
        tokens = await new_client_tokens(
            engines.writer, key_dir, name, config.clients, bodies.with_name("tokens.txt")
        )
        run = await measured_run(
            scenario,
            connections,
            service,
            engines.admin,
            url,
            duration=duration,
            bodies=bodies,
            tokens=tokens,
            watch_sealing=scenario == SEALING_ON,
        )
        answered, unanswered = answered + run.result.ok, unanswered + run.result.unanswered
        if reported:
            report.add(run)
    return answered, unanswered


async def _sealing_catch_up(engine: AsyncEngine) -> str:
    """How many events were waiting for the sequencer when the load stopped, and how
    long it took to seal them."""
    started = time.monotonic()
    backlog = pending = await unsealed_count(engine)
    while pending and time.monotonic() - started < 60:
        await asyncio.sleep(0.1)
        pending = await unsealed_count(engine)
    took = time.monotonic() - started
    state = "sealed" if not pending else f"{pending} still unsealed"
    return f"{backlog} events unsealed when the load stopped, {state} in {took:.1f} s"


async def service_instance(
    report: BackendReport,
    config: BenchConfig,
    *,
    scenario: str,
    env: dict[str, str],
    bodies: Path,
    engines: Engines,
) -> None:
    before = await lookup_outcomes(engines.admin)
    log = OUTPUT_DIR / f"{report.backend}-{scenario.replace(' ', '').replace(',', '-')}.log"
    async with service_server(config, env, log) as service:
        key_dir = Path(env["CPR_KEY_DIR"])
        answered, unanswered = await lookup_runs(
            report, config, service, scenario, bodies, engines, key_dir
        )
        if config.profile and scenario == SEALING_ON:
            extra = await profile_workers(report, config, service, bodies, engines, key_dir)
            answered, unanswered = answered + extra.ok, unanswered + extra.unanswered
        report.memory[scenario] = service.worker_rss_mib()
        if scenario == SEALING_ON:
            url = f"{service.base_url}/healthz"
            for connections in config.connections:
                run = await measured_run(
                    HEALTHZ, connections, service, engines.admin, url, duration=config.duration
                )
                report.add(run)
    after = await lookup_outcomes(engines.admin)
    outcomes = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    check = AuditCheck(scenario, sum(outcomes.values()), answered, unanswered, outcomes)
    report.audit.append(check)
    print(f"  audit: {check.describe()}", flush=True)


async def profile_workers(
    report: BackendReport,
    config: BenchConfig,
    service: Server,
    bodies: Path,
    engines: Engines,
    key_dir: Path,
) -> WrkResult:
    """An extra, unreported lookup run at the highest concurrency with py-spy sampling
    one worker (collapsed stacks, summarised) and another (flame graph SVG)."""
    workers = service.worker_pids()
    connections = max(config.connections)
    outputs = [
        (workers[0], "raw", OUTPUT_DIR / f"profile-{report.backend}.txt"),
        (workers[-1], "flamegraph", OUTPUT_DIR / f"profile-{report.backend}.svg"),
    ]
    profilers = [
        subprocess.Popen(  # noqa: ASYNC220 (they run beside the load)
            [
                str(BIN / "py-spy"),
                "record",
                f"--pid={pid}",
                f"--duration={max(1, int(config.duration))}",
                f"--format={form}",
                f"--output={path}",
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for pid, form, path in outputs
    ]
    tokens = await new_client_tokens(
        engines.writer, key_dir, "bench profile", config.clients, bodies.with_name("tokens.txt")
    )
    result = await run_wrk(
        f"{service.base_url}/v1/lookups",
        connections=connections,
        duration_seconds=config.duration,
        bodies=bodies,
        tokens=tokens,
    )
    for profiler in profilers:
        _, stderr = await asyncio.to_thread(profiler.communicate)
        if profiler.returncode != 0:
            report.profile.append(f"py-spy failed: {stderr.decode(errors='replace')[-300:]}")
    raw = outputs[0][2]
    if raw.exists():
        report.profile.extend(summarise_collapsed(raw.read_text(), top=15))
        report.profile.append(f"(collapsed stacks: {raw}; flame graph: {outputs[1][2]})")
    return result


async def ceiling_runs(
    report: BackendReport,
    config: BenchConfig,
    database: BenchDatabase,
    bodies: Path,
    engines: Engines,
) -> None:
    """The ceiling's runs. On PostgreSQL it connects as the service does (its login
    role acting as ``cpr_app``), to a scratch table the superuser makes and grants
    ``cpr_app`` only SELECT and INSERT on, as the audit log's."""
    async with engines.admin.begin() as connection:
        await connection.execute(text(CEILING_TABLE_SQL))
        if database.role is not None:
            await connection.execute(
                text(f"GRANT SELECT, INSERT ON {CEILING_TABLE} TO {database.role}")
            )
    url = database.service_url.replace("+aiosqlite", "").replace("+asyncpg", "")
    env = dict(os.environ) | {"BENCH_CEILING_DATABASE_URL": url}
    if database.role is not None:
        env["BENCH_CEILING_DATABASE_ROLE"] = database.role
    async with Server(
        ["bench.ceiling:create_app", "--factory"],
        workers=config.workers,
        env=env,
        ready_path="/",
        log_path=OUTPUT_DIR / f"{report.backend}-ceiling.log",
    ) as ceiling:
        url = f"{ceiling.base_url}/v1/lookups"
        if config.warmup > 0:
            await run_wrk(
                url,
                connections=max(config.connections),
                duration_seconds=config.warmup,
                bodies=bodies,
            )
        for connections in config.connections:
            run = await measured_run(
                CEILING,
                connections,
                ceiling,
                engines.admin,
                url,
                duration=config.duration,
                bodies=bodies,
            )
            report.add(run)
        report.memory[CEILING] = ceiling.worker_rss_mib()


# --- the register import -----------------------------------------------------------------


def _letters(n: int) -> str:
    """``n`` spelt in lower-case letters (names may hold letters only, not digits)."""
    spelt = ""
    while True:
        n, digit = divmod(n, 26)
        spelt = chr(ord("a") + digit) + spelt
        if n == 0:
            return spelt


def write_import_csv(path: Path, rows: int) -> None:
    """A CSV of ``rows`` new live plans for `cpr register import`, all distinct children
    (an import with a duplicate is refused whole): mostly born children with an NHS
    number, UNBORN_SHARE unborn (held against the mother), NO_NHS_NUMBER_SHARE known by
    names and date of birth only (a family name of their own keeps them distinct),
    several categories in the seeded register's proportions, review dates left to the
    default."""
    rng = random.Random(11)
    numbers = nhs_numbers(first_prefix=999_300_000)
    today = date.today()
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, IMPORT_COLUMNS)
        writer.writeheader()
        for n in range(rows):
            roll = rng.random()
            count = rng.choices((1, 2, 3, 4), CATEGORY_COUNT_WEIGHTS)[0]
            chosen = rng.sample(list(Category), k=count)
            row = {
                "categories": CATEGORY_SEPARATOR.join(c.value for c in chosen),
                "lead_professional": "Bench Social Worker",
                "team_contact": "Northshire Children's Services, 020 7946 0150",
                "notes": "Imported by the benchmark.",
            }
            if roll < UNBORN_SHARE:
                row |= {
                    "expected_delivery_date": (
                        today + timedelta(days=rng.randint(10, 200))
                    ).isoformat(),
                    "mother_nhs_number": next(numbers),
                    "mother_given_name": rng.choice(GIVEN_NAMES),
                    "mother_family_name": rng.choice(FAMILY_NAMES),
                    "mother_date_of_birth": (
                        today - timedelta(days=rng.randint(18 * 365, 40 * 365))
                    ).isoformat(),
                    "plan_start": (today - timedelta(days=rng.randint(0, 60))).isoformat(),
                }
            else:
                born = today - timedelta(days=rng.randint(30, 17 * 365))
                no_number = roll < UNBORN_SHARE + NO_NHS_NUMBER_SHARE
                row |= {
                    "child_nhs_number": "" if no_number else next(numbers),
                    "child_given_name": rng.choice(GIVEN_NAMES),
                    "child_family_name": f"Bench{_letters(n)}"
                    if no_number
                    else rng.choice(FAMILY_NAMES),
                    "child_date_of_birth": born.isoformat(),
                    "plan_start": (
                        today - timedelta(days=rng.randint(0, min(700, (today - born).days)))
                    ).isoformat(),
                }
            writer.writerow(row)


async def time_import(report: BackendReport, config: BenchConfig, tmp: Path) -> None:
    """`cpr register import` of config.entries rows, end to end, as a custodian runs it:
    the local check, the upload, the server's checks and the insert, against the
    service as deployed (uvicorn, config.workers workers) on a database of its own."""
    work = tmp / "import"
    work.mkdir(exist_ok=True)
    path = work / "import.csv"
    write_import_csv(path, config.entries)
    async with throwaway_database(report.backend, config, work) as database:
        env = service_env(database, work)
        prepare_database(database, env, work)
        custodian = json.loads((work / "demo-credentials.json").read_text())["custodian"]
        async with Server(
            ["app.main:create_app", "--factory"],
            workers=config.workers,
            env=env,
            ready_path="/readyz",
            log_path=OUTPUT_DIR / f"{report.backend}-import.log",
        ) as service:
            started = time.perf_counter()
            done = await asyncio.to_thread(
                cli,
                env
                | {"CPR_USERNAME": custodian["username"], "CPR_PASSWORD": custodian["password"]},
                "register",
                "import",
                str(path),
                f"--url={service.base_url}",
            )
            took = time.perf_counter() - started
    if done.returncode == 0:
        report.import_timing = (
            f"import: {config.entries} rows in {took:.1f} s (`cpr register import`, end to end)"
        )
    else:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        report.import_timing = (
            f"import: failed after {took:.1f} s (exit {done.returncode}): {last[0]}"
        )


# --- one backend -------------------------------------------------------------------------


async def bench_backend(backend: str, config: BenchConfig) -> BackendReport:
    report = BackendReport(backend)
    print(f"\n== {backend} ==", flush=True)
    with tempfile.TemporaryDirectory(prefix="cpr-bench-") as directory:
        tmp = Path(directory)
        async with throwaway_database(backend, config, tmp) as database:
            env = service_env(database, tmp)
            prepare_database(database, env, tmp)
            report.setup = setup_line(database, config)
            print(f"  {report.setup}", flush=True)
            engines = Engines(writer=seeding_engine(env), admin=admin_engine(database))
            try:
                report.seeded, bodies = await seed_for_lookups(
                    engines, config, env, tmp, history=config.history
                )
                # The service as deployed, then with one thing off, to measure its cost.
                for scenario, changed in (
                    (SEALING_ON, {}),
                    (SEALING_OFF, {"CPR_SEALING_ENABLED": "false"}),
                    (LIMITS_UNLOCKED, {"CPR_LOOKUP_LIMITS_SERIALISED": "false"}),
                ):
                    await service_instance(
                        report,
                        config,
                        scenario=scenario,
                        env=env | changed,
                        bodies=bodies,
                        engines=engines,
                    )
                await ceiling_runs(report, config, database, bodies, engines)
            finally:
                await engines.writer.dispose()
                await engines.admin.dispose()
        await time_import(report, config, tmp)
    print(f"  {report.import_timing}", flush=True)
    return report


async def main() -> int:
    config = BenchConfig.from_environment()
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    reports = []
    for backend in config.backends:
        if backend == "postgresql" and (problem := await postgres_unreachable(config)):
            print(f"PostgreSQL at {config.postgres_url} is unreachable ({problem}); skipped")
            continue
        reports.append(await bench_backend(backend, config))
    path = OUTPUT_DIR / "results.md"
    conditions = (
        f"{config.workers} uvicorn workers; wrk {config.duration:g} s per run "
        f"(threads = min(connections, 2)) on the same machine; register of "
        f"{config.entries} entries; {ON_PLAN_SHARE:.0%} of lookups on a plan; "
        f"{config.clients} system client(s) per lookup run."
    )
    write_results(reports, config.connections, conditions, path)
    print(f"\nwritten to {path.relative_to(ROOT)}")
    failed = any(check.verdict == "MISMATCH" for report in reports for check in report.audit)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
