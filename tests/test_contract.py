"""The committed OpenAPI document is the contract, and the running service keeps it.

Two kinds of test:

- Every path's 405 is a problem whose ``Allow`` lists exactly the methods the document
  gives the path, and the problem types are the registry's (through the app, both
  databases, like every other test).
- schemathesis drives ``openapi/openapi.json`` (the committed file, as an integrator
  would) against the service as it is deployed: ``uvicorn`` on a database of its own,
  with a token for each role, checking that nothing is a server error, every status,
  content type, header and body is the documented one, and every path answers an
  unsupported method with 405 and the right ``Allow``. ``make test`` runs a few examples
  per operation on SQLite; ``make fuzz`` many more (``FUZZ_EXAMPLES``) on PostgreSQL set
  up as production's (``FUZZ_BACKEND``). Operations that disable or revoke principals
  run last, with the operator's token, so no run loses the principals it needs.
"""

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis.engine import events as engine_events
from schemathesis.engine import from_schema

from app.admin.service import create_client, create_organisation, create_user
from app.auth.keys import ensure_signing_key
from app.cli import upgrade_database
from app.config import Environment, Settings
from app.db import create_engine, create_sessionmaker
from app.errors import PROBLEM_MEDIA_TYPE, PROBLEM_TYPE_PREFIX, PROBLEMS
from app.identity.models import OrganisationKind, Scope, UserRole
from app.register.models import Category
from app.register.schemas import EntryCreate, Person
from app.register.service import Actor, create_entry
from tests.conftest import POSTGRES_ADMIN_URL
from tests.production import APP_ROLE, production_database

# Real processes, ports and CPU-bound timing: one xdist worker runs all of these, in turn.
pytestmark = pytest.mark.xdist_group("processes")

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "openapi" / "openapi.json"
DOCUMENT: dict[str, Any] = json.loads(COMMITTED.read_text())
# HEAD too: the API does not serve it (no route declares it), so it is a 405 like any other.
METHODS = ("GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS", "TRACE")

# `make test`: a few examples per operation, on SQLite, in well under a minute.
# `make fuzz`: FUZZ_EXAMPLES per operation, on FUZZ_BACKEND (postgresql by default there).
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES") or 0)
MAX_EXAMPLES = FUZZ_EXAMPLES or 8
BACKEND = os.environ.get("FUZZ_BACKEND", "sqlite")
SEED = int(os.environ["FUZZ_SEED"]) if os.environ.get("FUZZ_SEED") else None
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "unsupported_method",
    "allow_header_conformance",
)


# --- 405 and problem types, through the app ---------------------------------------------


def _concrete(path: str) -> str:
    """The path with every parameter filled with an id of the right form."""
    parts = path.split("/")
    return "/".join(str(uuid.uuid4()) if part.startswith("{") else part for part in parts)


@pytest.mark.parametrize("path", sorted(DOCUMENT["paths"]))
async def test_every_405_lists_exactly_the_methods_of_its_path(
    client: httpx.AsyncClient, path: str
) -> None:
    documented = {method.upper() for method in DOCUMENT["paths"][path]}
    for method in sorted(set(METHODS) - documented):
        response = await client.request(method, _concrete(path))
        assert response.status_code == 405, (method, path, response.text)
        assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
        allowed = {name.strip() for name in response.headers["allow"].split(",")}
        assert allowed == documented, (method, path)
        if method != "HEAD":
            assert response.json()["code"] == "method_not_allowed"


async def test_a_get_of_the_search_path_is_a_405_not_an_entry_called_search(
    client: httpx.AsyncClient,
) -> None:
    for method in ("GET", "PATCH"):
        response = await client.request(method, "/v1/register/entries/search")
        assert response.status_code == 405
        assert response.headers["allow"] == "POST"


async def test_a_problem_names_its_type_by_a_stable_code(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/register/entries")
    body = response.json()
    assert response.status_code == 401
    assert body["code"] == "token_required"
    assert body["type"] == PROBLEM_TYPE_PREFIX + "token_required"
    assert body["title"] == PROBLEMS["token_required"].title
    missing = await client.get("/no/such/path")
    assert missing.json()["type"] == PROBLEM_TYPE_PREFIX + "not_found"


async def test_a_body_that_is_not_utf_8_is_an_invalid_request_not_a_400(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/v1/register/entries/search",
        content=b"\xff\xfe{",
        headers={"Content-Type": "application/json", "Authorization": "Bearer x"},
    )
    # FastAPI reads the body before the dependencies that check the token.
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_request"
    assert response.json()["errors"][0]["loc"] == ["body"]


def test_every_code_in_the_document_is_registered_and_every_status_has_a_problem() -> None:
    """Each problem status of each operation is problem+json naming registered codes of
    that very status (the token endpoint's 400/401/429 are RFC 6749's; /fhir/R4's are
    OperationOutcome too, the middleware's 413 and 503 problems)."""
    for path, operations in DOCUMENT["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                oauth = path == "/oauth/token" and status in ("400", "401", "429")
                if int(status) < 400 or oauth:
                    continue
                expected = {PROBLEM_MEDIA_TYPE}
                if path.startswith("/fhir/"):
                    expected.add("application/fhir+json")
                assert set(response["content"]) == expected, (method, path, status)
                for code in response["x-problem-codes"]:
                    assert PROBLEMS[code].status == int(status), (method, path, code)


def test_only_health_keys_and_the_token_endpoint_are_open() -> None:
    """Every other operation names its security requirement and documents its 401."""
    open_operations = set()
    for path, operations in DOCUMENT["paths"].items():
        for method, operation in operations.items():
            security = operation["security"]
            if not security or {} in security:  # no requirement, or an optional one
                open_operations.add(f"{method.upper()} {path}")
            elif path != "/oauth/token":
                assert "401" in operation["responses"], (method, path)
    assert open_operations == {
        "GET /healthz",
        "GET /readyz",
        "GET /.well-known/jwks.json",
        "POST /oauth/token",
        # FHIR's discovery (the CapabilityStatement) and the service's code systems.
        "GET /fhir/R4/metadata",
        "GET /fhir/R4/CodeSystem/{code_system_id}",
        "GET /fhir/R4/OperationDefinition/Patient-cp-lookup",
    }


def test_the_readme_lists_every_problem_type() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Problem types") :]
    for code in PROBLEMS:
        assert f"| `{code}` |" in table, code


# --- schemathesis against the running service -------------------------------------------


@dataclass
class Service:
    base_url: str
    credentials: dict[str, dict[str, str]]
    log: Path

    def token(self, role: str) -> str:
        response = httpx.post(f"{self.base_url}/oauth/token", data=self.credentials[role])
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _seed(settings: Settings) -> dict[str, dict[str, str]]:
    """Organisations, a principal of each role and a few entries, so that the run's
    answers include real ids for schemathesis to call back with."""
    engine = create_engine(settings)
    sessionmaker = create_sessionmaker(engine)
    credentials: dict[str, dict[str, str]] = {}
    async with sessionmaker() as session:
        await ensure_signing_key(session, settings.key_dir, actor="test:contract")
        orgs = {
            key: create_organisation(
                session,
                actor="test:contract",
                kind=kind,
                name=f"Contract {key}",
                ods_code=None,
                contact_name=f"{key} duty",
                contact_phone="020 7946 0100",
            )
            for key, kind in {
                "authority": OrganisationKind.local_authority,
                "hospital": OrganisationKind.emergency_department,
                "edt": OrganisationKind.out_of_hours_social_care,
                "operator": OrganisationKind.service_operator,
            }.items()
        }
        await session.flush()
        client, secret = create_client(
            session,
            actor="test:contract",
            organisation=orgs["hospital"],
            name="contract hospital system",
            scopes=frozenset({Scope.lookup}),
        )
        credentials["hospital_client"] = {
            "grant_type": "client_credentials",
            "client_id": client.id,
            "client_secret": secret,
        }
        for role, org, user_role in (
            ("duty_officer", "edt", UserRole.duty_officer),
            ("custodian", "authority", UserRole.custodian),
            ("operator", "operator", UserRole.operator),
        ):
            password = f"contract-{uuid.uuid4().hex}"
            create_user(
                session,
                actor="test:contract",
                organisation=orgs[org],
                username=f"contract-{role}",
                full_name=f"Contract {role}",
                role=user_role,
                password=password,
            )
            credentials[role] = {
                "grant_type": "password",
                "username": f"contract-{role}",
                "password": password,
            }
        today = date.today()
        for number, (nhs, given) in enumerate((("9991000011", "Amara"), ("9991000038", "Zoe"))):
            create_entry(
                session,
                actor=Actor("test:contract"),
                authority_id=orgs["authority"].id,
                data=EntryCreate(
                    child=Person(
                        nhs_number=nhs,
                        given_name=given,
                        family_name="Contract",
                        date_of_birth=today - timedelta(days=2000 + number),
                    ),
                    categories=[Category.neglect],
                    plan_start=today - timedelta(days=30),
                    lead_professional="Lead Professional",
                ),
            )
        await session.commit()
    await engine.dispose()
    return credentials


@contextmanager
def _database(directory: Path) -> Iterator[tuple[str, str | None, str]]:
    """(service URL, CPR_DATABASE_ROLE, owner URL) of a database of the run's own."""
    if BACKEND == "sqlite":
        url = f"sqlite+aiosqlite:///{directory / 'contract.sqlite3'}"
        yield url, None, url
        return
    with production_database(POSTGRES_ADMIN_URL) as database:
        yield database.service_url, APP_ROLE, database.owner_url


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The service as deployed (uvicorn, a real socket) on a throwaway database."""
    directory = tmp_path_factory.mktemp("contract")
    with _database(directory) as (url, role, owner_url):
        environment = {
            "CPR_ENVIRONMENT": Environment.test.value,
            "DATABASE_URL": url,
            "CPR_KEY_DIR": str(directory / "keys"),
            "CPR_CHECKPOINT_KEY_PATH": str(directory / "keys" / "checkpoint.pem"),
            "CPR_CHECKPOINT_DIR": str(directory / "checkpoints"),
            "CPR_LOG_LEVEL": "WARNING",
            # The run is one client and a few enquirers asking hundreds of times: limits
            # high enough that lookups are answered, not all refused (tests/security
            # test the limits themselves).
            "CPR_LOOKUP_LIMIT_PER_CLIENT": "1000000",
            "CPR_LOOKUP_LIMIT_PER_ENQUIRER": "1000000",
            "CPR_LOOKUP_PROBING_LIMIT_PER_CLIENT": "1000000",
        }
        if role is not None:
            environment["CPR_DATABASE_ROLE"] = role
        settings = Settings(
            environment=Environment.test,
            database_url=url,
            database_role=role,
            key_dir=directory / "keys",
            checkpoint_key_path=directory / "keys" / "checkpoint.pem",
            checkpoint_dir=directory / "checkpoints",
        )
        upgrade_database(settings.model_copy(update={"database_url": owner_url}))
        credentials = asyncio.run(_seed(settings))
        port = _free_port()
        log = directory / "uvicorn.log"
        with log.open("wb") as output:
            server = subprocess.Popen(  # noqa: S603  (our own interpreter and arguments)
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "app.main:create_app",
                    "--factory",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--no-access-log",
                ],
                cwd=ROOT,
                env={**os.environ, **environment},
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        try:
            base_url = f"http://127.0.0.1:{port}"
            _wait_until_ready(base_url, server, log)
            yield Service(base_url, credentials, log)
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def _wait_until_ready(base_url: str, server: "subprocess.Popen[bytes]", log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"uvicorn exited ({server.returncode}):\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"the service was not ready within 30 s:\n{log.read_text()[-4000:]}")


@dataclass(frozen=True)
class Run:
    """One schemathesis run: a role's token (None: none sent) over some operations."""

    role: str | None
    tags: tuple[str, ...] | None = None  # None: every operation
    # The coverage phase (boundary and invalid values of every parameter, unsupported
    # methods) is most of a run's cases: off where every answer is the same refusal.
    coverage: bool = True
    examples: int | None = None  # None: MAX_EXAMPLES


ROLES = ("custodian", "hospital_client", "duty_officer")
# In this order: the operator's run changes and revokes principals (the others' too, by
# the ids its lists return), so it comes last.
RUNS = (
    (
        # `make fuzz`: every role over every operation, every phase.
        Run(None),
        *(Run(role) for role in ROLES),
        Run("operator"),
    )
    if FUZZ_EXAMPLES
    else (
        # `make test`: each role over its own operations; the refusals (401 without a
        # token, 403 for another role's) with a few examples each.
        Run(None, ("auth", "health")),
        Run(None, coverage=False, examples=2),
        Run("custodian", ("register", "audit", "notifications")),
        Run("hospital_client", ("lookup",)),
        Run("duty_officer", ("lookup",)),
        Run(
            "duty_officer",
            ("register", "audit", "notifications", "admin"),
            coverage=False,
            examples=2,
        ),
        Run("custodian", ("lookup",), coverage=False, examples=2),
        Run("operator", ("admin",)),
    )
)


@dataclass
class Outcome:
    cases: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _config(base_url: str, run: Run) -> Any:
    return schemathesis.Config.from_dict(
        {
            "base-url": base_url,
            # One thread: with several, CPython 3.11's compiler fails under schemathesis
            # ("SystemError: AST constructor recursion depth mismatch").
            "workers": 1,
            # No example database in the working tree: FUZZ_SEED repeats a run instead.
            "generation": {
                "max-examples": run.examples or MAX_EXAMPLES,
                "mode": "all",
                "database": "none",
            },
            "phases": {
                "examples": {"enabled": True},
                "coverage": {"enabled": run.coverage},
                "fuzzing": {"enabled": True},
                # Stateless: links would chain a revoke into the fixtures' own principals.
                "stateful": {"enabled": False},
            },
            "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
            "request-timeout": 30,
            **({"seed": SEED} if SEED is not None else {}),
        }
    )


def _run(service: Service, run: Run) -> Outcome:
    """One run of the engine the `st` command drives, its results counted."""
    schema = schemathesis.openapi.from_path(str(COMMITTED), config=_config(service.base_url, run))
    if run.tags is not None:
        schema = schema.include(tag=list(run.tags))
    if run.role is not None:
        role = run.role

        @schema.auth(refresh_interval=300, retry_on=[])
        class _Token:
            """A fresh token every five minutes: `make fuzz` outlives one (15 minutes)."""

            def get(self, case: Any, ctx: Any) -> str:
                return service.token(role)

            def set(self, case: Any, data: str, ctx: Any) -> None:
                case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}

    outcome = Outcome()
    started = time.monotonic()
    for event in from_schema(schema).execute():
        if isinstance(event, engine_events.ScenarioFinished):
            outcome.cases += len(event.recorder.cases)
            outcome.statuses.update(
                interaction.response.status_code
                for interaction in event.recorder.interactions.values()
                if interaction.response is not None
            )
            for checks in event.recorder.checks.values():
                for check in checks:
                    if check.failure_info is not None:
                        failure = check.failure_info
                        outcome.failures.append(
                            f"[{run.role}] {failure.failure.operation}: {failure.failure.title}"
                            f"\n{failure.failure.message}\n{failure.code_sample}"
                        )
        elif isinstance(event, (engine_events.NonFatalError, engine_events.FatalError)):
            outcome.errors.append(f"[{run.role}] {event!r}")
    outcome.seconds = time.monotonic() - started
    return outcome


def test_schemathesis_finds_nothing_undocumented(service: Service) -> None:
    """No server error, no status, content type, header or body the committed document
    does not give, and a 405 with the right Allow for every method it does not give."""
    outcomes = {
        f"{run.role or 'anonymous'} {'/'.join(run.tags or ('all',))}": _run(service, run)
        for run in RUNS
    }
    summary = ", ".join(
        f"{name}: {outcome.cases} cases, {len(outcome.failures)} failures, "
        f"{outcome.seconds:.0f} s, statuses {dict(sorted(outcome.statuses.items()))}"
        for name, outcome in outcomes.items()
    )
    print(f"schemathesis ({MAX_EXAMPLES} examples per operation, {BACKEND}): {summary}")
    failures = [failure for outcome in outcomes.values() for failure in outcome.failures]
    errors = [error for outcome in outcomes.values() for error in outcome.errors]
    server_log = service.log.read_text()
    assert not errors, "\n\n".join(errors)
    assert not failures, f"{len(failures)} failures:\n\n" + "\n\n".join(failures[:30])
    # The event, not the words: schemathesis may send "unhandled_error" as a path segment.
    assert '"event": "unhandled_error"' not in server_log, server_log[-4000:]
    assert all(outcome.cases for outcome in outcomes.values()), summary
    # Each role's token was sent and worked: some of its operations answered.
    for run, outcome in zip(RUNS, outcomes.values(), strict=True):
        if run.role is not None and run.examples is None:
            assert any(200 <= status < 300 for status in outcome.statuses), summary
