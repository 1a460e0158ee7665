"""Server-side request forgery through a webhook: a custodian may not point the
notifier at anything but the public internet, unless the operator allows a host.

Review found webhooks accepted for http://127.0.0.1:…, http://169.254.169.254/…,
http://[::1]:5432/ and http://localhost:8000/, and the notifier POSTing to them.
"""

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from app.audit.models import AuditEvent
from app.config import Settings
from app.main import create_app
from app.notifications.notifier import Claimed
from app.notifications.targets import RefusedTarget, vet
from tests.conftest import World
from tests.enquiries import custodian_of

REFUSED = [
    "http://127.0.0.1:5432/",
    "http://127.1.2.3/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]:5432/",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[::ffff:169.254.169.254]/",
    "http://[fe80::1]/hook",
    "http://[fd00::1]/hook",
    "http://10.0.0.5/hook",
    "http://172.16.0.1/hook",
    "http://192.168.1.1/hook",
    "http://100.64.0.1/hook",
    "http://0.0.0.0:8000/",
    "http://[::]/hook",
    "http://224.0.0.1/hook",
    "http://240.0.0.1/hook",
    "http://255.255.255.255/hook",
    "http://localhost:8000/",  # a name that resolves to loopback
    "http://LOCALHOST./hook",
]


@pytest.fixture(scope="module")
async def strict(settings: Settings) -> AsyncIterator[FastAPI]:
    """The service with no host allowed, as production is by default."""
    app = create_app(
        settings.model_copy(update={"webhook_allowed_hosts": frozenset(), "sealing_enabled": False})
    )
    async with app.router.lifespan_context(app):
        yield app


@pytest.mark.parametrize("url", REFUSED)
async def test_a_webhook_into_the_network_is_refused_and_audited(
    strict: FastAPI, world: World, url: str
) -> None:
    custodian = await custodian_of(strict, strict.state.sessionmaker, world.orgs["authority_a"])
    transport = httpx.ASGITransport(app=strict)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        response = await http.put("/v1/notifications/webhook", json={"url": url}, headers=custodian)
    assert response.status_code == 422, response.text
    [error] = response.json()["errors"]
    assert error["loc"] == ["body", "url"]
    async with strict.state.sessionmaker() as session:
        event = await session.scalar(
            select(AuditEvent).where(AuditEvent.request_id == response.headers["x-request-id"])
        )
    assert event is not None
    assert (event.event_type, event.refusal) == (
        "notification.webhook_refused",
        "webhook_target_refused",
    )


async def test_a_name_resolving_to_loopback_is_refused_unless_the_operator_allows_it() -> None:
    with pytest.raises(RefusedTarget):
        await vet("http://localhost:8000/hook", frozenset())
    allowed = await vet("http://localhost:8000/hook", frozenset({"localhost"}))
    assert allowed.url == "http://localhost:8000/hook"  # as the operator named it
    assert (allowed.host, allowed.host_header) == ("localhost", "localhost:8000")


async def test_a_public_name_is_pinned_to_the_address_vetted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The delivery connects to the address the check saw, never resolving again (DNS
    rebinding), and keeps the name for Host and TLS."""
    loop = asyncio.get_running_loop()

    async def resolves_publicly(host: str, port: int, **_: object) -> list[tuple[object, ...]]:
        assert host == "hooks.authority.example"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port))]

    monkeypatch.setattr(loop, "getaddrinfo", resolves_publicly)
    target = await vet("https://hooks.authority.example:8443/cpr", frozenset())
    assert target.url == "https://93.184.215.14:8443/cpr"
    assert (target.host, target.host_header) == (
        "hooks.authority.example",
        "hooks.authority.example:8443",
    )


async def test_a_public_address_is_accepted_and_pinned() -> None:
    target = await vet("https://93.184.215.14/hook?x=1", frozenset())
    assert target.url == "https://93.184.215.14/hook?x=1"


async def test_an_unresolvable_name_is_refused() -> None:
    with pytest.raises(RefusedTarget, match="does not resolve"):
        await vet("https://no-such-host.invalid/hook", frozenset())


async def test_the_notifier_vets_again_at_delivery_and_sends_nothing_inside(
    strict: FastAPI,
) -> None:
    """A webhook stored before the check (or whose name now resolves inside): the
    delivery is refused, and the receiver on loopback never hears of it."""
    received: list[bytes] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        notifier = strict.state.notifier
        row = Claimed(
            id=uuid.uuid4(),
            attempts=0,
            payload={"kind": "test"},
            url=f"http://127.0.0.1:{port}/hook",
            signing_secret=None,
        )
        async with httpx.AsyncClient(follow_redirects=False) as http:
            status, error = await notifier._send(http, row)
        try:
            connection, _ = listener.accept()
            received.append(connection.recv(100))
        except BlockingIOError:
            pass
    assert (status, error) == (None, "webhook target refused")
    assert received == []
