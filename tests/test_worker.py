"""`cpr worker` as production runs it (issue 14): API servers with
``CPR_BACKGROUND_IN_API=false`` only answer; the workers seal, checkpoint and notify,
one active at a time, over one database in the production role set-up.

What an operator must see: exactly one worker active; the API answering and writing
the log while no worker runs, and that backlog sealed when one is back; kill -9 or a
freeze of the active worker handed over to the standby within a bound; SIGTERM seals
what is left and signs a final checkpoint; and the log verifies after all of it.
"""

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from bench.servers import Server
from tests.deployment import HTTP_TIMEOUT_SECONDS, Deployment, deploy, tokens

# Real processes, ports and CPU-bound timing: one xdist worker runs all of these, in turn.
pytestmark = pytest.mark.xdist_group("processes")

API = {"CPR_BACKGROUND_IN_API": "false"}
# Short so the test waits little; the defaults are 1 s and 10 s.
WORKER = {"CPR_WORKER_LEADER_CHECK_SECONDS": "0.5", "CPR_WORKER_LEADER_TIMEOUT_SECONDS": "3"}
TAKEOVER_BOUND_SECONDS = 8.0
DRAIN_BOUND_SECONDS = 20.0
SUBJECTS = ["9990000018", "9990000719", "9990000298"]


@pytest.fixture(scope="module")
def production(
    postgres_admin_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    with deploy(postgres_admin_url, tmp_path_factory.mktemp("worker")) as deployed:
        yield deployed


@pytest.fixture(scope="module")
async def api(production: Deployment) -> AsyncIterator[tuple[Server, str]]:
    async with production.server("api", **API) as server:
        yield server, (await tokens(server.base_url, production.credentials))[0]


async def lookups(base_url: str, token: str, count: int) -> list[str]:
    """``count`` lookups; the ids of those answered 200 (all must be)."""
    async with httpx.AsyncClient(base_url=base_url, timeout=HTTP_TIMEOUT_SECONDS) as http:

        async def one(n: int) -> httpx.Response:
            return await http.post(
                "/v1/lookups",
                headers={"Authorization": f"Bearer {token}"},
                json={
                    "subject": {"nhs_number": SUBJECTS[n % len(SUBJECTS)]},
                    "purpose": "unscheduled_care",
                    "reason": "Child presented at A&E with an injury",
                    "enquirer": {
                        "id": f"worker-test-{n % 4}",
                        "name": "Dr Test",
                        "role": "registrar",
                    },
                },
            )

        answers = await asyncio.gather(*(one(n) for n in range(count)))
    assert [a.status_code for a in answers] == [200] * count, answers[0].text
    return [a.json()["lookup_id"] for a in answers]


async def unsealed(production: Deployment) -> int:
    return int((await production.admin("SELECT count(*) AS n FROM audit_unsealed"))[0]["n"])


async def drained(production: Deployment, bound: float = DRAIN_BOUND_SECONDS) -> int:
    deadline = time.monotonic() + bound
    while True:
        left = await unsealed(production)
        if not left or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.25)


async def role(worker: Server) -> str:
    async with httpx.AsyncClient(base_url=worker.base_url, timeout=2) as http:
        try:
            return str((await http.get("/readyz")).json()["status"])
        except (httpx.TransportError, ValueError):
            return "down"


async def roles(*workers: Server) -> list[str]:
    return list(await asyncio.gather(*(role(w) for w in workers)))


async def until_one_active(*workers: Server, bound: float = TAKEOVER_BOUND_SECONDS) -> float:
    """Seconds until exactly one of ``workers`` says it is active."""
    started = time.monotonic()
    while (seen := await roles(*workers)).count("active") != 1:
        assert time.monotonic() - started < bound, f"no single active worker: {seen}"
        await asyncio.sleep(0.1)
    return time.monotonic() - started


def verified(production: Deployment) -> None:
    done = production.cli("audit", "verify")
    assert done.returncode == 0, done.stdout + done.stderr


async def test_api_answers_without_a_worker_and_the_backlog_is_sealed_when_one_starts(
    production: Deployment, api: tuple[Server, str]
) -> None:
    server, token = api
    before = await unsealed(production)
    answered = await lookups(server.base_url, token, 30)
    # No worker: every answer's event is committed and waits in the queue.
    events = await production.admin(
        "SELECT count(*) AS n FROM audit_events WHERE id = ANY($1::uuid[])", answered
    )
    assert events[0]["n"] == len(answered)
    assert await unsealed(production) >= before + len(answered)
    async with production.worker("worker", **WORKER) as worker:
        assert await role(worker) == "active"
        assert await drained(production) == 0
    # SIGTERM: the final checkpoint covers everything sealed.
    newest = await production.admin("SELECT max(size) AS size FROM audit_checkpoints")
    sealed = await production.admin("SELECT count(*) AS n FROM audit_seals")
    assert newest[0]["size"] == sealed[0]["n"]
    latest = (Path(production.env["CPR_CHECKPOINT_DIR"]) / "latest.txt").read_text()
    assert f"\n{sealed[0]['n']}\n" in latest
    verified(production)


async def test_one_worker_is_active_and_a_standby_takes_over_from_a_killed_one(
    production: Deployment, api: tuple[Server, str]
) -> None:
    server, token = api
    async with (
        production.worker("worker-a", **WORKER) as first,
        production.worker("worker-b", **WORKER) as second,
    ):
        await until_one_active(first, second)
        await asyncio.sleep(1.5)  # several checks: still exactly one
        assert sorted(await roles(first, second)) == ["active", "standby"]
        active, standby = (first, second) if await role(first) == "active" else (second, first)
        await lookups(server.base_url, token, 20)
        assert await drained(production) == 0

        active.send_signal(signal.SIGKILL, group=True)
        took = await until_one_active(standby)
        production.record(f"worker kill -9: standby active after {took:.2f} s")
        # Lookups went on meanwhile, and the new active worker seals them.
        await lookups(server.base_url, token, 20)
        assert await drained(production) == 0
    verified(production)


@pytest.mark.chaos
async def test_a_frozen_active_worker_is_replaced_and_steps_down_when_it_thaws(
    production: Deployment, api: tuple[Server, str]
) -> None:
    server, token = api
    async with (
        production.worker("worker-c", **WORKER) as first,
        production.worker("worker-d", **WORKER) as second,
    ):
        await until_one_active(first, second)
        active, standby = (first, second) if await role(first) == "active" else (second, first)
        active.send_signal(signal.SIGSTOP, group=True)
        try:
            # The database ends the frozen worker's session after its timeout (3 s here).
            took = await until_one_active(standby, bound=TAKEOVER_BOUND_SECONDS + 3)
            production.record(f"worker frozen: standby active after {took:.2f} s")
            await lookups(server.base_url, token, 20)
            assert await drained(production) == 0
        finally:
            active.send_signal(signal.SIGCONT, group=True)
        # Thawed, it finds its session gone and stands by: one active, never two.
        deadline = time.monotonic() + TAKEOVER_BOUND_SECONDS
        while sorted(seen := await roles(first, second)) != ["active", "standby"]:
            assert time.monotonic() < deadline, f"after the thaw: {seen}"
            await asyncio.sleep(0.2)
        assert await role(standby) == "active"
        await lookups(server.base_url, token, 10)
        assert await drained(production) == 0
    verified(production)


async def test_the_worker_is_alive_but_unready_while_the_database_refuses_it(
    production: Deployment,
) -> None:
    """Kubernetes keeps it (live) but counts it out (503 on /readyz, with the reason)."""
    broken = production.database.service_url.rsplit("/", 1)[0] + "/no_such_database"
    worker = production.worker("worker-unready", ready_path="/livez", DATABASE_URL=broken, **WORKER)
    async with worker, httpx.AsyncClient(base_url=worker.base_url, timeout=2) as http:
        await asyncio.sleep(1)
        ready = await http.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["status"] == "unavailable"
    assert "database did not answer" in ready.json()["problems"][0]
