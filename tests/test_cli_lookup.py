"""`cpr lookup`: a duty officer at a terminal, through the real API on loopback."""

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator

import pytest
import uvicorn
from click.testing import CliRunner

from app.cli import main
from app.config import Settings
from app.main import create_app
from tests.conftest import NHS, World


@pytest.fixture
async def served(settings: Settings) -> AsyncIterator[str]:
    """Another replica of the service, served by uvicorn on a free loopback port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(settings.model_copy(update={"sealing_enabled": False}))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while True:
        if server.started or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    # Joined off the loop: the replica's shutdown may wait for SQLite's write lock, held
    # by this loop's own app until it runs again (a blocking join held both for 10 s).
    await asyncio.to_thread(thread.join, 10)


def _run(url: str, world: World, *args: str) -> tuple[int, str]:
    credentials = world["duty_officer"].credentials
    result = CliRunner().invoke(
        main,
        [
            "lookup",
            "--url",
            url,
            "--username",
            credentials["username"],
            "--password",
            credentials["password"],
            "--reason",
            "police referral at 02:10",
            *args,
        ],
    )
    return result.exit_code, result.output


# The CLI blocks, so it runs in a thread: the test app's own event loop (and its
# sequencer, which may be mid-transaction) must keep running meanwhile.


async def test_duty_officer_looks_up_by_nhs_number(served: str, world: World) -> None:
    code, output = await asyncio.to_thread(_run, served, world, "--nhs-number", NHS["multi"])
    assert code == 0, output
    assert "ON PLAN" in output
    assert "neglect, emotional abuse" in output
    assert "Dúbois" not in output


async def test_a_bad_nhs_number_is_explained_not_answered(served: str, world: World) -> None:
    code, output = await asyncio.to_thread(_run, served, world, "--nhs-number", "1234567890")
    assert code == 1
    assert "not a valid NHS number" in output
    assert "ON PLAN" not in output
