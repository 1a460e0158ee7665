"""Faults under load, in the production configuration, through real HTTP (issue 11).

The service runs as it is deployed: ``uvicorn app.main:create_app --factory
--workers 2``, logged in as a NOINHERIT login role with ``CPR_DATABASE_ROLE=cpr_app``
(tests/production.py sets the roles up as docs/audit-log.md prescribes; the
migrations run as the schema owner; nothing runs as a superuser except this
test's own checks). The database is a private PostgreSQL cluster the test makes
itself (tests/pgcluster.py), so it can be stopped, frozen and killed without
touching the shared server.

What a user must see, whatever breaks:

- every 200 has exactly one committed ``lookup`` audit event, read back through
  a separate superuser connection (``lookup_id`` is the event's id);
- a database that is stopped, frozen or refusing the audit INSERT gives 503
  ``application/problem+json`` with no register data, within CLIENT_BOUND_SECONDS,
  never a 500, never a hang; ``/readyz`` says 503 within the same bound;
- when the database comes back the service answers 200 again by itself within
  RECOVERY_BOUND_SECONDS, with no restart;
- after kill -9 or SIGTERM the backlog is sealed and ``cpr audit verify`` passes.

The timeouts are the service's defaults (app/config.py), which is what an
operator gets. Only the volume limits are raised, as ``make bench`` does: the
load here is many lookups by a few clients, which the defaults would refuse
with 429 long before any fault.

The fast variants run in ``make test``; the long ones (longer outages, repeated
faults, more load) are marked ``chaos`` and run with ``make chaos``.
"""

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from bench.servers import Server
from tests.deployment import (
    HTTP_TIMEOUT_SECONDS,
    Deployment,
    deploy,
    tokens,
)
from tests.pgcluster import PgCluster
from tests.production import APP_ROLE

# Real processes, ports and CPU-bound timing: one xdist worker runs all of these, in turn.
pytestmark = pytest.mark.xdist_group("processes")

# DESIGN/issue 11: 503 within ~3 s (the service's request deadline is 2.5 s by default);
# measured at the client, so a little slack for the client sharing the machine.
CLIENT_BOUND_SECONDS = 3.5
RECOVERY_BOUND_SECONDS = 5.0
SHUTDOWN_BOUND_SECONDS = 15.0
DRAIN_BOUND_SECONDS = 20.0

REGISTER_KEYS = {"lookup_id", "categories", "contact", "unborn"}
# (subject, status expected on a healthy database), from the demo register (app/demo.py)
SUBJECTS = [
    ("9990000018", "on_plan"),
    ("9990000298", "on_plan"),
    ("9990000646", "on_plan"),
    ("9990000719", "not_on_plan"),
    ("9990001901", "not_on_plan"),
]


@dataclass(frozen=True)
class Profile:
    """How hard a test pushes: the fast one for `make test`, the long one for `make chaos`."""

    name: str
    concurrency: int
    bursts: int
    burst_size: int
    outage_seconds: float
    cycles: int
    kills: int


FAST = Profile(
    "fast", concurrency=12, bursts=4, burst_size=40, outage_seconds=3.5, cycles=1, kills=1
)
LONG = Profile(
    "long", concurrency=48, bursts=10, burst_size=100, outage_seconds=20, cycles=3, kills=3
)
PROFILES = [
    pytest.param(FAST, id="fast"),
    pytest.param(LONG, id="long", marks=pytest.mark.chaos),
]


# --- the deployment ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    with PgCluster.create() as made:
        yield made


@pytest.fixture(scope="module")
def deployment(
    cluster: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    with deploy(cluster.admin_url, tmp_path_factory.mktemp("production"), cluster) as deployed:
        yield deployed
        # dropping the database needs the cluster up
        cluster.thaw()
        if cluster.postmaster_pid() is None:
            cluster.start()


@pytest.fixture
def prod(deployment: Deployment) -> Iterator[Deployment]:
    """The deployment, healthy again after each test whatever the test did to it."""
    yield deployment
    cluster = deployment.cluster
    cluster.thaw()
    if cluster.postmaster_pid() is None:
        cluster.start()
    asyncio.run(deployment.admin(f"GRANT INSERT ON audit_events TO {APP_ROLE}"))


# --- load and what it saw -----------------------------------------------------------------


@dataclass
class Outcome:
    path: str
    started: float  # time.monotonic()
    elapsed: float
    status: int | None = None
    content_type: str = ""
    body: Any = None
    error: str | None = None
    expected: str | None = None  # a lookup's status on a healthy database
    enquirer: str | None = None  # a lookup's enquirer id, unique to it: finds its event

    @property
    def ended(self) -> float:
        return self.started + self.elapsed

    @property
    def lookup_id(self) -> str | None:
        if self.status == 200 and isinstance(self.body, dict):
            return self.body.get("lookup_id")
        return None


class Load:
    """Lookups through real HTTP: bursts, or a closed loop of ``concurrency`` callers."""

    def __init__(self, base_url: str, tokens: list[str], concurrency: int) -> None:
        self.base_url = base_url
        self.tokens = tokens
        self.outcomes: list[Outcome] = []
        self.probes: list[Outcome] = []
        self._count = itertools.count()
        # Idle connections are dropped well before uvicorn's 5 s keep-alive timeout: a
        # request sent as the server closes an idle connection would be lost in transit,
        # a client-side race that is no fault of the service.
        limits = httpx.Limits(
            max_connections=concurrency + 4,
            max_keepalive_connections=concurrency,
            keepalive_expiry=1.0,
        )
        self._http = httpx.AsyncClient(
            base_url=base_url, timeout=HTTP_TIMEOUT_SECONDS, limits=limits
        )
        self._concurrency = concurrency
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> "Load":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
        await self._http.aclose()

    def body(self, subject: str, enquirer: str) -> dict[str, Any]:
        return {
            "subject": {"nhs_number": subject},
            "purpose": "unscheduled_care",
            "reason": "fault test",
            "enquirer": {"id": enquirer, "name": "Dr Fault", "role": "registrar"},
        }

    async def request(self, method: str, path: str, **kwargs: Any) -> Outcome:
        started = time.monotonic()
        outcome = Outcome(path, started, 0.0)
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            outcome.error = f"{type(exc).__name__}: {exc}"[:200]
        else:
            outcome.status = response.status_code
            outcome.content_type = response.headers.get("content-type", "")
            try:
                outcome.body = response.json()
            except ValueError:
                outcome.body = response.text[:200]
        outcome.elapsed = time.monotonic() - started
        return outcome

    async def lookup(self) -> Outcome:
        n = next(self._count)
        subject, expected = SUBJECTS[n % len(SUBJECTS)]
        token = self.tokens[n % len(self.tokens)]
        enquirer = f"F{uuid.uuid4().hex[:12]}"
        outcome = await self.request(
            "POST",
            "/v1/lookups",
            json=self.body(subject, enquirer),
            headers={"Authorization": f"Bearer {token}"},
        )
        outcome.expected = expected
        outcome.enquirer = enquirer
        self.outcomes.append(outcome)
        return outcome

    async def burst(self, size: int) -> list[Outcome]:
        return list(await asyncio.gather(*(self.lookup() for _ in range(size))))

    async def readyz(self) -> Outcome:
        outcome = await self.request("GET", "/readyz")
        self.probes.append(outcome)
        return outcome

    def start(self, *, probe_every: float = 0.25) -> None:
        """``concurrency`` callers, each sending the next lookup when answered; and a
        /readyz probe, as a load balancer would send."""
        self._stop.clear()

        async def caller() -> None:
            while not self._stop.is_set():
                if (await self.lookup()).status is None:
                    await asyncio.sleep(0.05)  # refused: do not spin while the server is away

        async def prober() -> None:
            while not self._stop.is_set():
                await self.readyz()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), probe_every)

        self._tasks = [asyncio.create_task(caller()) for _ in range(self._concurrency)]
        self._tasks.append(asyncio.create_task(prober()))

    async def stop(self) -> None:
        self._stop.set()
        if self._tasks:
            # every request has its own timeout: this ends within HTTP_TIMEOUT_SECONDS
            await asyncio.gather(*self._tasks)
            self._tasks = []

    def between(self, start: float, end: float) -> list[Outcome]:
        return [o for o in self.outcomes if o.started >= start and o.started < end]


def summary(outcomes: list[Outcome]) -> str:
    if not outcomes:
        return "no requests"
    kinds = Counter(
        str(o.status) if o.status is not None else (o.error or "?").split(":")[0] for o in outcomes
    )
    latencies = sorted(o.elapsed for o in outcomes)
    p50 = latencies[len(latencies) // 2]
    return (
        f"{len(outcomes)} requests: {dict(sorted(kinds.items()))}; "
        f"latency p50 {p50:.3f} s, max {latencies[-1]:.3f} s"
    )


def leaks(outcome: Outcome) -> list[str]:
    """Register data in a response that is not a 200 answer."""
    if not isinstance(outcome.body, dict):
        return []
    found = sorted(REGISTER_KEYS & outcome.body.keys())
    if outcome.body.get("status") in ("on_plan", "not_on_plan", "refer_to_custodian"):
        found.append("status")
    return found


def refused_properly(outcome: Outcome) -> bool:
    """503 problem+json, nothing of the register in it."""
    return (
        outcome.status == 503
        and outcome.content_type.startswith("application/problem+json")
        and not leaks(outcome)
    )


def when(outcomes: list[Outcome], origin: float, limit: int = 4) -> str:
    """A few outcomes, timed from ``origin`` (the fault): what, when, how long."""
    shown = [
        f"{o.status or (o.error or '?').split(':')[0]} sent at {o.started - origin:+.2f} s, "
        f"answered after {o.elapsed:.2f} s"
        for o in outcomes[:limit]
    ]
    return "[" + "; ".join(shown) + (", ..." if len(outcomes) > limit else "") + "]"


def fault_problems(
    outcomes: list[Outcome],
    *,
    origin: float,
    bound: float = CLIENT_BOUND_SECONDS,
    allow_errors: bool = False,
) -> list[str]:
    """What a user must never see: a 500 (or any status but 200/503), a 503 that is not
    a problem document or that discloses, no answer at all, an answer later than ``bound``.
    Times in the report are from ``origin``, the fault."""
    problems = []
    other = [o for o in outcomes if o.status not in (200, 503, None)]
    if other:
        problems.append(
            f"{len(other)} answered neither 200 nor 503: "
            f"{dict(Counter(o.status for o in other))} {when(other, origin)}, "
            f"e.g. {str(other[0].body)[:200]}"
        )
    bad_503 = [o for o in outcomes if o.status == 503 and not refused_properly(o)]
    if bad_503:
        problems.append(
            f"{len(bad_503)} 503s not problem+json without register data, e.g. "
            f"{bad_503[0].content_type} {str(bad_503[0].body)[:200]}"
        )
    if not allow_errors:
        unanswered = [o for o in outcomes if o.status is None]
        if unanswered:
            problems.append(
                f"{len(unanswered)} got no HTTP answer {when(unanswered, origin)}, "
                f"e.g. {unanswered[0].error}"
            )
    slow = [o for o in outcomes if o.elapsed > bound]
    if slow:
        problems.append(
            f"{len(slow)} took longer than {bound} s (max {max(o.elapsed for o in slow):.2f} s) "
            f"{when(slow, origin)}"
        )
    return problems


async def unaudited(prod: Deployment, outcomes: list[Outcome]) -> list[str]:
    """Every 200 must have exactly one committed lookup event whose outcome is the answer."""
    answered = [o for o in outcomes if o.status == 200]
    problems = []
    without_id = [o for o in answered if not o.lookup_id]
    if without_id:
        problems.append(f"{len(without_id)} 200s without lookup_id, e.g. {without_id[0].body!r}")
    ids = [o.lookup_id for o in answered if o.lookup_id]
    rows = await prod.admin(
        "SELECT id::text AS id, event_type, outcome, count(*) OVER (PARTITION BY id) AS n "
        "FROM audit_events WHERE id = ANY($1::uuid[])",
        ids,
    )
    events = {row["id"]: row for row in rows}
    missing = [i for i in ids if i not in events]
    if missing:
        problems.append(
            f"{len(missing)} of {len(ids)} 200 answers have no committed audit event "
            f"(e.g. lookup_id {missing[0]})"
        )
    duplicated = [i for i, count in Counter(ids).items() if count > 1]
    if duplicated:
        problems.append(f"{len(duplicated)} lookup_ids were answered more than once")
    wrong = [
        o
        for o in answered
        if o.lookup_id in events
        and (
            events[o.lookup_id]["event_type"] != "lookup"
            or events[o.lookup_id]["outcome"] != o.body.get("status")
        )
    ]
    if wrong:
        event = events[wrong[0].lookup_id]
        problems.append(
            f"{len(wrong)} events do not record the answer given, e.g. "
            f"{event['event_type']}/{event['outcome']} for {wrong[0].body.get('status')}"
        )
    return problems


async def enquirers_with_events(prod: Deployment, enquirers: list[str]) -> set[str]:
    """Which of these (unique) enquirer ids have a lookup event: the service began them."""
    rows = await prod.admin(
        "SELECT DISTINCT enquirer_id FROM audit_events "
        "WHERE event_type = 'lookup' AND enquirer_id = ANY($1::text[])",
        enquirers,
    )
    return {row["enquirer_id"] for row in rows}


def recovery_seconds(load: Load, back: float, until: float = float("inf")) -> float:
    """From the database coming back to the first lookup after which every lookup was
    answered 200 (of those answered before ``until``, the next fault)."""
    later = sorted(
        (o for o in load.outcomes if back <= o.started and o.ended < until),
        key=lambda o: o.started,
    )
    first_good = None
    for outcome in later:
        if outcome.status != 200:
            first_good = None
        elif first_good is None:
            first_good = outcome.started
    return float("inf") if first_good is None else first_good - back


async def until_recovered(load: Load, back: float, steady: float = 1.0) -> None:
    """Waits until lookups have been 200 for ``steady`` seconds, or past the bound."""
    deadline = back + RECOVERY_BOUND_SECONDS + steady
    while time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        recovered = recovery_seconds(load, back)
        if time.monotonic() - (back + recovered) >= steady:
            return


@contextlib.asynccontextmanager
async def serving(
    prod: Deployment, label: str, concurrency: int, **env: str
) -> AsyncIterator[tuple[Server, Load]]:
    async with prod.server(label, **env) as server:
        load = Load(server.base_url, await tokens(server.base_url, prod.credentials), concurrency)
        async with load:
            yield server, load


def log_tail(server: Server, chars: int = 1500) -> str:
    try:
        return server._log_path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


async def unsealed_drains(prod: Deployment, bound: float = DRAIN_BOUND_SECONDS) -> int:
    """Waits for the sequencer to seal the backlog; returns what is left after ``bound``."""
    deadline = time.monotonic() + bound
    while True:
        left = (await prod.admin("SELECT count(*) AS n FROM audit_unsealed"))[0]["n"]
        if left == 0 or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.25)


def verify(prod: Deployment) -> subprocess.CompletedProcess[str]:
    return prod.cli("audit", "verify")


def report(*parts: list[str]) -> str:
    return "; ".join(problem for part in parts for problem in part)


# --- the harness itself -----------------------------------------------------------------------


async def test_the_fault_harness_breaks_only_its_own_cluster(prod: Deployment) -> None:
    """The cluster is private, and a freeze really hangs it (else the tests prove nothing)."""
    cluster = prod.cluster
    assert cluster.port != 5432
    assert cluster.data.is_dir()
    assert cluster.data.is_relative_to(tempfile.gettempdir())
    cluster.freeze()
    try:
        started = time.monotonic()
        with pytest.raises((TimeoutError, OSError, asyncpg.PostgresError)):
            await prod.admin("SELECT 1", wait=2)
        assert time.monotonic() - started >= 1.5
    finally:
        cluster.thaw()
    assert (await prod.admin("SELECT 1 AS one"))[0]["one"] == 1


# --- a: a fresh server on a healthy database -------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
async def test_concurrent_lookups_from_an_empty_pool_are_all_audited(
    prod: Deployment, profile: Profile
) -> None:
    async with serving(prod, f"fresh-{profile.name}", profile.burst_size) as (server, load):
        for _ in range(profile.bursts):
            await load.burst(profile.burst_size)
            await asyncio.sleep(0.2)
        outcomes = load.outcomes
        ready = await load.readyz()
    assert len(outcomes) >= 100
    problems = report(
        await unaudited(prod, outcomes), fault_problems(outcomes, origin=outcomes[0].started)
    )
    not_200 = [o for o in outcomes if o.status != 200]
    prod.record(f"fresh server ({profile.name}): {summary(outcomes)}")
    context = f"healthy database, fresh server: {summary(outcomes)}; log: {log_tail(server)}"
    assert not problems, f"{problems}; {context}"
    assert not not_200, f"{len(not_200)} not 200 on a healthy database; {context}"
    wrong = [o for o in outcomes if o.body.get("status") != o.expected]
    assert not wrong, f"{len(wrong)} wrong answers, e.g. {wrong[0].body} for {wrong[0].expected}"
    assert ready.status == 200, f"/readyz on a healthy database: {ready.status} {ready.body}"


# --- b: the audit INSERT refused ------------------------------------------------------------


async def test_lookups_fail_closed_while_the_audit_insert_is_refused(prod: Deployment) -> None:
    async with serving(prod, "revoked", 10) as (server, load):
        warm = await load.burst(10)
        assert all(o.status == 200 for o in warm), f"before the revoke: {summary(warm)}"
        await prod.admin(f"REVOKE INSERT ON audit_events FROM {APP_ROLE}")
        refused: list[Outcome] = []
        for _ in range(3):
            refused += await load.burst(10)
        ready = await load.readyz()
        await prod.admin(f"GRANT INSERT ON audit_events TO {APP_ROLE}")
        granted_at = time.monotonic()
        again: list[Outcome] = []
        while time.monotonic() - granted_at < RECOVERY_BOUND_SECONDS:
            again = await load.burst(10)
            if all(o.status == 200 for o in again):
                break
            await asyncio.sleep(0.2)
        recovered = time.monotonic() - granted_at
    answered = [o for o in refused if o.status == 200]
    not_refused = [o for o in refused if not refused_properly(o)]
    prod.record(
        f"INSERT revoked: {summary(refused)}; /readyz {ready.status}; "
        f"granted again: {summary(again)} after {recovered:.2f} s"
    )
    context = (
        f"INSERT on audit_events revoked from {APP_ROLE}: {summary(refused)}; "
        f"log: {log_tail(server)}"
    )
    assert not answered, (
        f"{len(answered)} answered 200 with the log unwritable (their events: "
        f"{await unaudited(prod, answered) or 'present?!'}); {context}"
    )
    assert not not_refused, (
        f"{len(not_refused)} not 503 problem+json without register data, e.g. "
        f"{(not_refused or [None])[0]}; {context}"
    )
    assert ready.status == 503, f"/readyz with the log unwritable: {ready.status} {ready.body}"
    assert all(o.status == 200 for o in again), (
        f"INSERT granted again: after {recovered:.1f} s still {summary(again)}"
    )
    problems = report(
        await unaudited(prod, load.outcomes), fault_problems(refused, origin=refused[0].started)
    )
    assert not problems, f"{problems}; {context}"


# --- c, d: the database stopped, or frozen, under load -------------------------------------


async def _outage(prod: Deployment, profile: Profile, how: str) -> None:
    cluster = prod.cluster
    async with serving(prod, f"{how}-{profile.name}", profile.concurrency) as (server, load):
        load.start()
        await asyncio.sleep(1.0)
        windows: list[tuple[float, float]] = []
        for _ in range(profile.cycles):
            down = time.monotonic()
            if how == "stopped":
                await asyncio.to_thread(cluster.stop, "immediate")
            else:
                cluster.freeze()
            await asyncio.sleep(profile.outage_seconds)
            if how == "stopped":
                await asyncio.to_thread(cluster.start)
            else:
                cluster.thaw()
            back = time.monotonic()
            windows.append((down, back))
            await until_recovered(load, back)
        await load.stop()
        after = await load.burst(profile.concurrency)
        log = log_tail(server)
    outcomes, probes = load.outcomes, load.probes
    # answered while the database was down (clear of the edges: pg_ctl returns a little
    # after the cluster has stopped, or has begun to accept connections again)
    clear = [(down + 0.5, back - 0.3) for down, back in windows]
    during = [o for o in outcomes if any(s <= o.ended < e for s, e in clear)]
    probes_during = [p for p in probes if any(s <= p.ended < e for s, e in clear)]
    recoveries = [
        recovery_seconds(load, back, next_down)
        for (_, back), (next_down, _) in zip(
            windows, [*windows[1:], (float("inf"), 0.0)], strict=True
        )
    ]
    context = (
        f"database {how} under load ({profile.name}, {profile.cycles} x "
        f"{profile.outage_seconds} s): all lookups {summary(outcomes)}; during the outage "
        f"{summary(during)}; /readyz during it {summary(probes_during)}; "
        f"recovery after {', '.join(f'{r:.2f}' for r in recoveries)} s"
    )
    prod.record(context)
    origin = windows[0][0]
    problems = report(
        await unaudited(prod, outcomes),
        fault_problems(outcomes, origin=origin),
        [f"/readyz: {p}" for p in fault_problems(probes, origin=origin)],
    )
    assert not problems, f"{context}; {problems}; log: {log}"
    assert during, context
    answered = [o for o in during if o.status == 200]
    assert not answered, (
        f"{context}: {len(answered)} answered 200 while the database was {how} "
        f"{when(answered, origin)}"
    )
    assert probes_during, context
    assert all(p.status == 503 for p in probes_during), context
    assert max(recoveries) <= RECOVERY_BOUND_SECONDS, context
    assert all(o.status == 200 for o in after), f"{context}; afterwards {summary(after)}"


@pytest.mark.parametrize("profile", PROFILES)
async def test_database_stopped_under_load_gives_prompt_503_and_recovers(
    prod: Deployment, profile: Profile
) -> None:
    await _outage(prod, profile, "stopped")


@pytest.mark.parametrize("profile", PROFILES)
async def test_database_frozen_under_load_gives_prompt_503_and_recovers(
    prod: Deployment, profile: Profile
) -> None:
    await _outage(prod, profile, "frozen")


# --- e: kill -9 ------------------------------------------------------------------------------


async def _two_workers(server: Server, bound: float = 15.0) -> list[int]:
    """The workers, once uvicorn has two again (it replaces one that died)."""
    deadline = time.monotonic() + bound
    workers = server.worker_pids()
    while len(workers) != 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        workers = server.worker_pids()
    return workers


@pytest.mark.parametrize("profile", PROFILES)
async def test_kill_9_of_a_worker_and_of_the_server_loses_no_audit_event(
    prod: Deployment, profile: Profile
) -> None:
    everything: list[Outcome] = []
    notes: list[str] = []
    first_kill = float("inf")
    for round_ in range(profile.kills):
        label = f"kill-{profile.name}-{round_ + 1}"
        async with serving(prod, label, profile.concurrency) as (server, load):
            load.start()
            await asyncio.sleep(1.5)
            # one worker, while the other keeps answering
            workers = await _two_workers(server)
            assert len(workers) == 2, f"uvicorn workers: {workers}"
            os.kill(workers[0], signal.SIGKILL)
            one = time.monotonic()
            first_kill = min(first_kill, one)
            await asyncio.sleep(2)
            # then the whole server, master and workers at once
            server.send_signal(signal.SIGKILL, group=True)
            every = time.monotonic()
            await server.wait(10)
            await asyncio.sleep(0.5)
            await load.stop()
            workers_after = server.worker_pids()
        everything += load.outcomes
        # the killed worker's requests are lost with it: nothing else may fail
        near_kill = [o for o in load.outcomes if o.started < one + 0.5 and o.ended >= one]
        before_all = [o for o in load.between(0, every) if o.ended < every]
        failed = [o for o in before_all if o not in near_kill and o.status != 200]
        notes.append(
            f"round {round_ + 1}: {summary(load.outcomes)}; at the worker kill "
            f"{summary(near_kill)}; not 200 otherwise before the server kill: "
            f"{summary(failed)}; workers after {workers_after}"
        )
        assert not failed, f"{notes}"

    # restarted: the backlog is sealed and the log verifies
    async with serving(prod, f"after-kill-{profile.name}", profile.concurrency) as (server, load):
        after = await load.burst(profile.concurrency)
        everything += after
        left = await unsealed_drains(prod)
        verified = await asyncio.to_thread(verify, prod)
    prod.record(f"kill -9 ({profile.name}): {notes}; unsealed after restart {left}")
    problems = report(
        await unaudited(prod, everything),
        fault_problems(everything, origin=first_kill, allow_errors=True),
    )
    assert not problems, f"{notes}; {problems}"
    assert all(o.status == 200 for o in after), f"{notes}; restarted: {summary(after)}"
    assert left == 0, f"{notes}; {left} events still unsealed {DRAIN_BOUND_SECONDS} s after restart"
    assert verified.returncode == 0, (
        f"{notes}; cpr audit verify exited {verified.returncode}:\n"
        f"{verified.stdout}{verified.stderr[-2000:]}"
    )


# --- f, g: SIGTERM ---------------------------------------------------------------------------


def _latest_checkpoint_size(prod: Deployment) -> int | None:
    latest = Path(prod.env["CPR_CHECKPOINT_DIR"]) / "latest.txt"
    try:
        return int(latest.read_text().splitlines()[1])
    except (OSError, IndexError, ValueError):
        return None


@pytest.mark.parametrize("profile", PROFILES)
async def test_sigterm_under_load_finishes_and_seals_what_it_answered(
    prod: Deployment, profile: Profile
) -> None:
    async with serving(prod, f"sigterm-{profile.name}", profile.concurrency) as (server, load):
        load.start()
        await asyncio.sleep(1.5)
        term = time.monotonic()
        server.send_signal(signal.SIGTERM)
        code = await server.wait(SHUTDOWN_BOUND_SECONDS)
        exited = time.monotonic() - term
        await load.stop()
        outcomes = load.outcomes
        log = log_tail(server)
    in_flight = [o for o in outcomes if o.started < term <= o.ended]
    # Unanswered: begun by the service (its event is there: the answer was lost), or
    # never begun (its bytes still unread on a keep-alive connection between two
    # requests, which uvicorn closes as idle when it stops: the caller sees a reset).
    unanswered = [o for o in in_flight if o.status is None]
    begun = await enquirers_with_events(prod, [o.enquirer for o in unanswered if o.enquirer])
    dropped = [o for o in unanswered if o.enquirer in begun]
    unsealed = (await prod.admin("SELECT count(*) AS n FROM audit_unsealed"))[0]["n"]
    sealed = (await prod.admin("SELECT count(*) AS n FROM audit_seals"))[0]["n"]
    signed = (await prod.admin("SELECT coalesce(max(size), 0) AS n FROM audit_checkpoints"))[0]["n"]
    context = (
        f"SIGTERM under load: {summary(outcomes)}; in flight at SIGTERM {summary(in_flight)}, "
        f"of which {len(unanswered) - len(dropped)} unanswered and never begun (no event); "
        f"master exit {code} after {exited:.1f} s; unsealed {unsealed}, sealed {sealed}, "
        f"last checkpoint {signed}, in the directory {_latest_checkpoint_size(prod)}"
    )
    prod.record(f"{context} ({profile.name})")
    problems = report(
        await unaudited(prod, outcomes), fault_problems(outcomes, origin=term, allow_errors=True)
    )
    assert code is not None, f"{context}: still running after {SHUTDOWN_BOUND_SECONDS} s; {log}"
    assert not problems, f"{context}; {problems}; log: {log}"
    assert not dropped, (
        f"{context}: {len(dropped)} in-flight lookups were audited but got no answer "
        f"{when(dropped, term)}; log: {log}"
    )
    unfinished = [o for o in in_flight if o.status is not None and o.status != 200]
    assert not unfinished, f"{context}: in-flight lookups were not answered 200; log: {log}"
    assert unsealed == 0, f"{context}: the final seal did not run; log: {log}"
    assert signed == sealed == _latest_checkpoint_size(prod), (
        f"{context}: no final checkpoint of everything sealed; log: {log}"
    )
    async with serving(prod, f"after-sigterm-{profile.name}", 4) as (server, load):
        again = await load.burst(4)
        verified = await asyncio.to_thread(verify, prod)
    assert all(o.status == 200 for o in again), summary(again)
    assert verified.returncode == 0, (
        f"next start: cpr audit verify exited {verified.returncode}:\n"
        f"{verified.stdout}{verified.stderr[-2000:]}"
    )


async def test_sigterm_with_the_database_frozen_ends_within_a_bound(prod: Deployment) -> None:
    cluster = prod.cluster
    async with serving(prod, "sigterm-frozen", 8) as (server, load):
        load.start()
        await asyncio.sleep(1.0)
        try:
            cluster.freeze()
            await asyncio.sleep(0.5)
            term = time.monotonic()
            server.send_signal(signal.SIGTERM)
            code = await server.wait(SHUTDOWN_BOUND_SECONDS)
            exited = time.monotonic() - term
            await load.stop()
        finally:
            cluster.thaw()
        outcomes = load.outcomes
        log = log_tail(server)
    # (a request sent in the last moment before SIGTERM may still be in the socket,
    # unread, when the worker closes its idle connections: it was never begun)
    sent_before = [o for o in outcomes if o.started < term - 0.5]
    sent_after = [o for o in outcomes if o.started >= term - 0.5]
    # Once both workers have stopped accepting, the master still holds the listening
    # socket until it exits: the kernel accepts new connections into its backlog, and
    # their requests wait, unanswered, until the master exits and the kernel resets them.
    # That is uvicorn's, and a load balancer has stopped sending by then; reported, not
    # failed. What was sent before SIGTERM, and every answer given, is held to the bound.
    waited = [o for o in sent_after if o.status is None]
    context = (
        f"SIGTERM, database frozen: {summary(outcomes)}; sent before SIGTERM (- 0.5 s) "
        f"{summary(sent_before)}; master exit {code} after {exited:.1f} s; sent after SIGTERM "
        f"and never answered: {summary(waited)}"
    )
    prod.record(context)
    assert code is not None, f"{context}: still running after {SHUTDOWN_BOUND_SECONDS} s; {log}"
    problems = report(
        await unaudited(prod, outcomes),
        fault_problems(sent_before, origin=term),
        fault_problems([o for o in sent_after if o.status is not None], origin=term),
    )
    assert not problems, f"{context}; {problems}; log: {log}"
    # what the final seal could not do, the next start does
    async with serving(prod, "after-sigterm-frozen", 4) as (server, load):
        again = await load.burst(4)
        left = await unsealed_drains(prod)
        verified = await asyncio.to_thread(verify, prod)
    assert all(o.status == 200 for o in again), summary(again)
    assert left == 0, f"{left} events still unsealed after the restart"
    assert verified.returncode == 0, (
        f"cpr audit verify exited {verified.returncode}:\n"
        f"{verified.stdout}{verified.stderr[-2000:]}"
    )


# --- exact volume limits: two instances of two workers, one database ----------------------


async def _police_token(base_url: str, credentials: dict[str, Any]) -> str:
    client = credentials["police_client"]
    async with httpx.AsyncClient(base_url=base_url, timeout=HTTP_TIMEOUT_SECONDS) as http:
        response = await http.post(
            "/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=(client["client_id"], client["client_secret"]),
        )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


async def test_volume_limits_hold_exactly_for_bursts_across_instances_and_workers(
    prod: Deployment,
) -> None:
    """Review found 31-46 of 50 answered under a per-enquirer limit of 30, and 305-316
    under a per-client limit of 300: each request counted before the others wrote.
    Here a burst is split between two uvicorn instances of two workers each."""
    limits = {
        "CPR_LOOKUP_LIMIT_PER_ENQUIRER": "30",
        "CPR_LOOKUP_LIMIT_PER_CLIENT": "100",
        # The count's exactness is judged here, not the burst's latency: on a machine at
        # half speed (CI on 2026-12-02) some of 50 lookups serialised on one enquirer's
        # count outlasted the 2 s deadline and were refused, 503 and nothing disclosed,
        # as they should be; the faults tests judge the deadlines.
        "CPR_REQUEST_TIMEOUT_SECONDS": "15",
        "CPR_DATABASE_LOCK_TIMEOUT_SECONDS": "10",
        "CPR_DATABASE_STATEMENT_TIMEOUT_SECONDS": "10",
        "CPR_DATABASE_POOL_TIMEOUT_SECONDS": "10",
    }
    async with prod.server("limits-a", **limits) as a, prod.server("limits-b", **limits) as b:
        token = await _police_token(a.base_url, prod.credentials)
        subject = SUBJECTS[0][0]
        enquirer = f"L{uuid.uuid4().hex[:10]}"

        async def ask(server: Server, http: httpx.AsyncClient, who: str) -> int:
            response = await http.post(
                f"{server.base_url}/v1/lookups",
                json={
                    "subject": {"nhs_number": subject},
                    "purpose": "police_investigation",
                    "reason": "limit test",
                    "enquirer": {"id": who, "name": "DC Limit", "role": "detective"},
                },
                headers={"Authorization": f"Bearer {token}"},
            )
            return response.status_code

        limits_http = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_SECONDS, limits=limits_http) as http:
            one_enquirer = await asyncio.gather(
                *(ask((a, b)[n % 2], http, enquirer) for n in range(50))
            )
            # The client's 50 lookups so far count too (answered or refused): 50 more.
            many_enquirers = await asyncio.gather(
                *(ask((a, b)[n % 2], http, f"{enquirer}-{n}") for n in range(80))
            )
    prod.record(
        f"limits: one enquirer {one_enquirer.count(200)}/50 answered (limit 30); "
        f"one client {many_enquirers.count(200)}/80 answered (50 left of 100)"
    )
    assert one_enquirer.count(200) == 30, one_enquirer
    assert set(one_enquirer) == {200, 429}
    assert many_enquirers.count(200) == 50, many_enquirers
    assert set(many_enquirers) == {200, 429}


async def test_a_sign_in_burst_across_instances_and_workers_gets_at_most_the_limit_checked(
    prod: Deployment,
) -> None:
    """Review found 20 of 20 concurrent wrong secrets checked, and the right one given
    a token inside a burst of 24 wrong ones. Here: two uvicorn instances of two
    workers, three bursts of 25 wrong secrets: at most the limit is ever checked, and
    then the right secret is refused too. (The right one inside a burst: the in-process
    tests, tests/security/test_sign_in_lockout.py.)"""
    client = prod.credentials["police_client"]
    principal = f"client:{client['client_id']}"
    [[before]] = await prod.admin(
        "SELECT count(*) FROM audit_events WHERE event_type = 'auth.login_failed' "
        "AND principal = $1",
        principal,
    )
    statuses: list[int] = []
    async with (
        prod.server("sign-in-a") as a,
        prod.server("sign-in-b") as b,
        httpx.AsyncClient(timeout=HTTP_TIMEOUT_SECONDS) as http,
    ):

        async def sign_in(n: int, secret: str) -> int:
            server = (a, b)[n % 2]
            response = await http.post(
                f"{server.base_url}/oauth/token",
                data={"grant_type": "client_credentials"},
                auth=(client["client_id"], secret),
            )
            return response.status_code

        for _ in range(3):
            statuses += await asyncio.gather(*(sign_in(n, "wrong-secret") for n in range(25)))
        locked = await sign_in(0, client["client_secret"])
    [[after]] = await prod.admin(
        "SELECT count(*) FROM audit_events WHERE event_type = 'auth.login_failed' "
        "AND principal = $1",
        principal,
    )
    checked = after - before
    prod.record(f"sign-in bursts: {checked} wrong secrets checked of 75 sent (limit 5)")
    assert checked <= 5, checked
    assert 500 not in statuses
    assert locked == 429  # the right secret too, once locked


# --- the worker (production: CPR_BACKGROUND_IN_API=false, `cpr worker`) -----------------


async def _worker_status(worker: Server) -> str:
    async with httpx.AsyncClient(base_url=worker.base_url, timeout=2) as http:
        try:
            return str((await http.get("/readyz")).json()["status"])
        except (httpx.TransportError, ValueError):
            return "down"


async def _until_worker(worker: Server, status: str, bound: float) -> float:
    started = time.monotonic()
    while (seen := await _worker_status(worker)) != status:
        assert time.monotonic() - started < bound, f"worker {seen!r}, not {status!r}"
        await asyncio.sleep(0.1)
    return time.monotonic() - started


@pytest.mark.chaos
@pytest.mark.parametrize("how", ["stopped", "frozen"])
async def test_the_worker_stands_by_through_a_database_outage_and_seals_after_it(
    prod: Deployment, how: str
) -> None:
    """The database goes away under the active worker: it says so (503 on /readyz within
    the client bound) and stops working; when the database is back it is active again by
    itself, and seals what the API answered meanwhile and after."""
    cluster = prod.cluster
    assert cluster is not None
    async with (
        serving(prod, f"worker-outage-{how}", 4, CPR_BACKGROUND_IN_API="false") as (_, load),
        prod.worker(f"worker-outage-{how}") as worker,
    ):
        assert await _worker_status(worker) == "active"
        await load.burst(20)
        assert await unsealed_drains(prod) == 0
        if how == "stopped":
            await asyncio.to_thread(cluster.stop, "immediate")
        else:
            cluster.freeze()
        try:
            went = await _until_worker(worker, "unavailable", CLIENT_BOUND_SECONDS + 2)
        finally:
            if how == "stopped":
                await asyncio.to_thread(cluster.start)
            else:
                cluster.thaw()
        back = await _until_worker(worker, "active", RECOVERY_BOUND_SECONDS + 10)
        prod.record(
            f"worker, database {how}: unready after {went:.2f} s, active {back:.2f} s after"
        )
        await until_recovered(load, time.monotonic())
        answered = await load.burst(20)
        assert all(o.status == 200 for o in answered), summary(answered)
        assert await unsealed_drains(prod) == 0
    done = verify(prod)
    assert done.returncode == 0, done.stdout + done.stderr
