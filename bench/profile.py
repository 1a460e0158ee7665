"""Reading py-spy's collapsed stacks (``--format raw``): where a worker's time goes."""

from collections import Counter

# (marker in a frame's file path, layer), first match wins. Native code (uvloop,
# asyncpg's protocol, httptools, greenlet) has no Python frame of its own: py-spy
# charges it to the nearest Python frame, e.g. the event loop's Runner.run.
LAYERS = (
    ("/app/", "cp-register (app/)"),
    ("asyncio/runners.py", "event loop (uvloop, native I/O)"),
    ("anyio", "anyio (sync dependencies run in worker threads)"),
    ("sqlalchemy", "SQLAlchemy"),
    ("asyncpg", "asyncpg"),
    ("aiosqlite", "aiosqlite / sqlite3"),
    ("sqlite3", "aiosqlite / sqlite3"),
    ("pydantic", "pydantic"),
    ("fastapi", "FastAPI / Starlette"),
    ("starlette", "FastAPI / Starlette"),
    ("uvicorn", "uvicorn / HTTP"),
    ("httptools", "uvicorn / HTTP"),
    ("uvloop", "uvicorn / HTTP"),
    ("jose", "JWT (python-jose, cryptography)"),
    ("cryptography", "JWT (python-jose, cryptography)"),
    ("ecdsa", "JWT (python-jose, cryptography)"),
    ("rfc8785", "audit hashing (rfc8785)"),
    ("structlog", "logging"),
    ("logging", "logging"),
    ("asyncio", "asyncio"),
    ("json", "json"),
)


# Leaf frames of threads that wait for work. py-spy samples them as busy, but their
# threads use next to no CPU (read from /proc/<pid>/task/*/stat under load), so
# they are left out of the shares.
IDLE_LEAVES = ("Condition.wait (threading.py", "Queue.get (queue.py")


def _frames(line: str) -> tuple[list[str], int]:
    stack, _, count = line.rpartition(" ")
    return stack.split(";"), int(count)


def _function_and_path(frame: str) -> tuple[str, str]:
    """``lookup (app/lookup/service.py:120)`` -> ``("lookup", "/app/lookup/service.py")``."""
    function, _, where = frame.partition(" (")
    return function, "/" + where.rsplit(":", 1)[0].lstrip("/")


def layer_of(frame: str) -> str:
    _, path = _function_and_path(frame)
    for marker, layer in LAYERS:
        if marker in path:
            return layer
    return "other (stdlib, interpreter)"


def _own_function(frame: str) -> str | None:
    """``lookup (app/lookup/service.py)`` for a frame of the project's code, else None."""
    function, path = _function_and_path(frame)
    if "/app/" not in path:
        return None
    return f"{function} (app/{path.rsplit('/app/', 1)[1]})"


def summarise_collapsed(collapsed: str, *, top: int) -> list[str]:
    """Lines for the report: self time by layer, then the project's own functions by
    inclusive time (how much of the worker's busy time is spent under each)."""
    by_layer: Counter[str] = Counter()
    own_inclusive: Counter[str] = Counter()
    total = idle = 0
    for line in collapsed.splitlines():
        if not line.strip():
            continue
        frames, count = _frames(line)
        if frames[-1].startswith(IDLE_LEAVES):
            idle += count
            continue
        total += count
        by_layer[layer_of(frames[-1])] += count
        for function in {name for frame in frames if (name := _own_function(frame))}:
            own_inclusive[function] += count
    if not total:
        return ["no samples"]
    lines = [
        f"{total} samples of one worker while busy ({idle} more of idle worker threads left "
        "out); self time by layer:"
    ]
    lines += [f"  {share(count, total)}  {layer}" for layer, count in by_layer.most_common()]
    lines.append("cp-register functions, inclusive time (time spent under each):")
    lines += [f"  {share(count, total)}  {name}" for name, count in own_inclusive.most_common(top)]
    return lines


def share(count: int, total: int) -> str:
    return f"{count / total:5.1%}"
