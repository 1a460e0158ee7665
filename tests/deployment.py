"""The service deployed as production runs it, for the tests that start real processes.

A database with the roles docs/audit-log.md prescribes (tests/production.py), migrated
as the schema owner, the checkpoint key made as `cpr audit keygen` would, and the demo
organisations, clients and register bootstrapped through `cpr demo bootstrap` acting as
the service. API servers run as `uvicorn app.main:create_app --factory --workers 2`,
workers as `cpr worker`, with the service's environment (its login role and
``CPR_DATABASE_ROLE``), never as a superuser.
"""

import contextlib
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from app.audit.chain import CheckpointSigner
from app.cli import upgrade_database
from app.config import Environment, Settings
from bench.servers import Server
from tests.pgcluster import PgCluster
from tests.production import APP_ROLE, ProductionDatabase, asyncpg_dsn, production_database

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
CLI_TIMEOUT_SECONDS = 120.0
HTTP_TIMEOUT_SECONDS = 10.0


@dataclass
class Deployment:
    # The private cluster the database lives on, when the test breaks the database itself.
    cluster: PgCluster | None
    database: ProductionDatabase
    env: dict[str, str]
    credentials: dict[str, Any]
    logs: Path
    servers: itertools.count = field(default_factory=lambda: itertools.count(1))

    def server(self, label: str, **env: str) -> Server:
        """An API server: uvicorn with two workers, as the Dockerfile runs it."""
        return Server(
            ["app.main:create_app", "--factory"],
            workers=2,
            env=self.env | env,
            ready_path="/readyz",
            log_path=self.logs / f"{label}-{next(self.servers)}.log",
        )

    def worker(self, label: str, *, ready_path: str = "/readyz", **env: str) -> Server:
        """`cpr worker`, its probes on a port of its own; by default entered once it is
        ready (active or standing by)."""
        return Server(
            [str(BIN / "cpr"), "worker"],
            port_env="CPR_WORKER_HEALTH_PORT",
            env=self.env | env,
            ready_path=ready_path,
            log_path=self.logs / f"{label}-{next(self.servers)}.log",
        )

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """`cpr ARGS` with the service's environment (its login role, CPR_DATABASE_ROLE)."""
        return subprocess.run(  # noqa: S603 (our own command)
            [str(BIN / "cpr"), *args],
            env=self.env | env,
            capture_output=True,
            text=True,
            check=False,
            timeout=CLI_TIMEOUT_SECONDS,
            cwd=ROOT,
        )

    def record(self, line: str) -> None:
        """What a test measured, kept beside the servers' logs (and shown with -s)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / "summary.txt").open("a") as summary_file:
            summary_file.write(line + "\n")
        print(line)

    async def admin(self, sql: str, *args: Any, wait: float = 5) -> list[asyncpg.Record]:
        """As the superuser, in the service's database: the test's own eyes."""
        connection = await asyncpg.connect(asyncpg_dsn(self.database.admin_url), timeout=wait)
        try:
            return await connection.fetch(sql, *args, timeout=30)
        finally:
            await connection.close(timeout=5)


def service_env(database: ProductionDatabase, work: Path) -> dict[str, str]:
    inherited = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("CPR_") and key != "DATABASE_URL"
    }
    return inherited | {
        "DATABASE_URL": database.service_url,
        "CPR_DATABASE_ROLE": APP_ROLE,
        "CPR_ENVIRONMENT": "test",
        "CPR_KEY_DIR": str(work / "keys"),
        "CPR_CHECKPOINT_KEY_PATH": str(work / "keys" / "audit-checkpoint.ed25519.pem"),
        "CPR_CHECKPOINT_DIR": str(work / "checkpoints"),
        # The load is many lookups by a few clients, which the defaults refuse with 429.
        "CPR_LOOKUP_LIMIT_PER_CLIENT": "100000000",
        "CPR_LOOKUP_LIMIT_PER_ENQUIRER": "100000000",
        "CPR_LOG_LEVEL": "WARNING",
        # The tests wait (up to 20 s) for the background checkpoint to cover what they
        # sealed; production's default interval is a minute.
        "CPR_CHECKPOINT_INTERVAL_SECONDS": "5",
    }


@contextlib.contextmanager
def deploy(admin_url: str, work: Path, cluster: PgCluster | None = None) -> Iterator[Deployment]:
    """A database on the server at ``admin_url`` set up as an operator would; dropped after."""
    with production_database(admin_url) as database:
        env = service_env(database, work)
        if cluster is None:
            # The shared server's connections are shared with the rest of the suite.
            env["CPR_DATABASE_POOL_SIZE"] = "4"
        owner = Settings(
            environment=Environment.test,
            database_url=database.owner_url,
            key_dir=Path(env["CPR_KEY_DIR"]),
            checkpoint_key_path=Path(env["CPR_CHECKPOINT_KEY_PATH"]),
            checkpoint_dir=Path(env["CPR_CHECKPOINT_DIR"]),
        )
        upgrade_database(owner)
        # before any worker starts: racing workers would each create one (as `cpr audit keygen`)
        CheckpointSigner.from_file(owner.checkpoint_key_path, owner.audit_log_origin, create=True)
        # the servers' logs outlive pytest's rotation of its temporary directories
        logs = ROOT / "var" / "fault-tests" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        deployed = Deployment(cluster, database, env, {}, logs)
        credentials = work / "demo-credentials.json"
        done = deployed.cli("demo", "bootstrap", "--credentials", str(credentials))
        assert done.returncode == 0, (
            f"cpr demo bootstrap as the service failed:\n{done.stdout}\n{done.stderr}"
        )
        deployed.credentials = json.loads(credentials.read_text())
        yield deployed


async def tokens(base_url: str, credentials: dict[str, Any]) -> list[str]:
    """A token for the demo's emergency department system client."""
    client = credentials["emergency_department_client"]
    async with httpx.AsyncClient(base_url=base_url, timeout=HTTP_TIMEOUT_SECONDS) as http:
        response = await http.post(
            "/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=(client["client_id"], client["client_secret"]),
        )
    assert response.status_code == 200, f"no token: {response.status_code} {response.text}"
    return [response.json()["access_token"]]
