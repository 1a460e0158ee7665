"""Where one lookup's time goes, stage by stage: `python -m bench.stages`.

The app runs in this process (sealing off, so that only the request path is
measured) on a throwaway database seeded like `make bench`'s, and answers
BENCH_STAGES_LOOKUPS lookups one after another through ASGI. The stages of the
lookup are wrapped with timers (wall clock and this process's CPU time) by
replacing the module attributes the endpoint calls; app/ itself is unchanged.
What no stage covers (FastAPI's routing and dependencies, taking a database
connection from the pool, parsing the body, building and
sending the answer) is shown as the rest.

Settings: BENCH_BACKENDS, BENCH_ENTRIES, BENCH_POSTGRES_URL as for bench/run.py;
BENCH_STAGES_LOOKUPS (500).
"""

import asyncio
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import event

import app.lookup.service
from app.config import Settings
from app.main import create_app
from bench.run import (
    BenchConfig,
    admin_engine,
    new_client_token,
    postgres_unreachable,
    prepare_database,
    seeding_engine,
    service_env,
    service_settings,
    throwaway_database,
    write_bodies,
)
from bench.seed import analyse, seed_audit_history, seed_register

STAGES = (
    (app.lookup.service, "verify_token", "token: signature and claims"),
    (
        app.lookup.service,
        "principal_and_limits",
        "principal, organisation, jti and both volume counts (one query)",
    ),
    (app.lookup.service, "find_candidates", "matching (one query)"),
    (app.lookup.service, "write_event", "audit event: INSERT and COMMIT"),
)
WARM_UP = 50


@dataclass
class Clock:
    wall: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)

    def add(self, label: str, wall: float, cpu: float) -> None:
        self.wall[label] = self.wall.get(label, 0.0) + wall
        self.cpu[label] = self.cpu.get(label, 0.0) + cpu


def timed(clock: Clock, label: str, work: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return await work(*args, **kwargs)
        finally:
            clock.add(label, time.perf_counter() - wall, time.process_time() - cpu)

    return wrapper


async def measure(backend: str, config: BenchConfig, lookups: int) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="cpr-stages-") as directory:
        tmp = Path(directory)
        async with throwaway_database(backend, config, tmp) as database:
            env = service_env(database, tmp, CPR_SEALING_ENABLED="false")
            prepare_database(database, env, tmp)
            engine, admin = seeding_engine(env), admin_engine(database)
            try:
                seeded = await seed_register(engine, entries=config.entries, never_registered=1000)
                await seed_audit_history(engine, service_settings(env), events=config.history)
                await analyse(admin)
                write_bodies(tmp / "bodies.jsonl", seeded)
                os.environ.update(env)
                return await _lookups(engine, tmp / "bodies.jsonl", lookups)
            finally:
                await engine.dispose()
                await admin.dispose()


async def _lookups(engine: Any, bodies_path: Path, lookups: int) -> list[str]:
    clock = Clock()
    service = create_app(Settings())

    async def whole_request(scope: Any, receive: Any, send: Any) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            await service(scope, receive, send)
        finally:
            clock.add("whole request", time.perf_counter() - wall, time.process_time() - cpu)

    originals = [(module, name, getattr(module, name)) for module, name, _ in STAGES]
    for module, name, label in STAGES:
        setattr(module, name, timed(clock, label, getattr(module, name)))
    try:
        return await _drive(service, whole_request, engine, bodies_path, lookups, clock)
    finally:
        for module, name, original in originals:
            setattr(module, name, original)


async def _drive(
    service: Any,
    whole_request: Any,
    engine: Any,
    bodies_path: Path,
    lookups: int,
    clock: Clock,
) -> list[str]:
    statements = 0
    bodies = (await asyncio.to_thread(bodies_path.read_text)).splitlines()
    async with (
        service.router.lifespan_context(service),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=whole_request), base_url="http://bench"
        ) as http,
    ):

        def count(*_: Any) -> None:
            nonlocal statements
            statements += 1

        service_engine = service.state.sessionmaker.kw["bind"]
        event.listen(service_engine.sync_engine, "before_cursor_execute", count)
        token = await new_client_token(engine, "http://bench", "bench stages", http=http)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        for n in range(WARM_UP + lookups):
            if n == WARM_UP:
                clock.wall.clear()
                clock.cpu.clear()
                statements = 0
            response = await http.post("/v1/lookups", content=bodies[n], headers=headers)
            response.raise_for_status()
    return _table(clock, lookups, statements)


def _table(clock: Clock, lookups: int, statements: int) -> list[str]:
    total_wall, total_cpu = clock.wall["whole request"], clock.cpu["whole request"]
    rows = [(label, clock.wall.get(label, 0.0), clock.cpu.get(label, 0.0)) for *_, label in STAGES]
    rest_wall = total_wall - sum(wall for _, wall, _ in rows)
    rest_cpu = total_cpu - sum(cpu for _, _, cpu in rows)
    rows.append(("the rest: framework, pool checkout, body, answer", rest_wall, rest_cpu))
    rows.append(("whole request", total_wall, total_cpu))
    lines = [
        f"{lookups} lookups one after another by one client; {statements / lookups:.1f} "
        "statements each through SQLAlchemy's cursor (BEGIN and COMMIT not among them)",
        "",
        "| stage | wall ms | CPU ms (this process) | share of CPU |",
        "|---|---:|---:|---:|",
    ]
    for label, wall, cpu in rows:
        lines.append(
            f"| {label} | {1000 * wall / lookups:.2f} | {1000 * cpu / lookups:.2f} | "
            f"{cpu / total_cpu:.0%} |"
        )
    return lines


async def main() -> None:
    config = BenchConfig.from_environment()
    lookups = int(os.environ.get("BENCH_STAGES_LOOKUPS", "500"))
    for backend in config.backends:
        if backend == "postgresql" and (problem := await postgres_unreachable(config)):
            print(f"PostgreSQL at {config.postgres_url} is unreachable ({problem}); skipped")
            continue
        print(f"\n## {backend}\n")
        print("\n".join(await measure(backend, config, lookups)))


if __name__ == "__main__":
    asyncio.run(main())
