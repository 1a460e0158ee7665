"""Authenticated by default: every route of the app, API and web client alike, resolves
its caller through a dependency (the bearer token's principal, or the web session's),
unless it is listed below as open, with the reason it may be. A new route that forgets
its principal fails here, instead of answering anyone."""

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import iter_route_contexts

from app.auth.principals import get_principal
from app.config import Environment, Settings
from app.main import create_app
from app.web.session import get_signed_in

# What names the caller: the API's bearer token (require_scope depends on it too), and
# the web client's session cookie.
AUTHENTICATORS: frozenset[Callable[..., Any]] = frozenset({get_principal, get_signed_in})

# The open routes, each with why it needs no principal from a dependency.
OPEN: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): "the load balancer's liveness probe: asked before anyone signs in",
    ("GET", "/readyz"): "the load balancer's readiness probe: says no more than ready or not",
    ("POST", "/oauth/token"): "where a token comes from: the client's secret or the user's "
    "password is the credential, checked (and audited) by the route",
    ("GET", "/.well-known/jwks.json"): "public keys, published so that tokens can be checked",
    ("POST", "/v1/lookups"): "not open: the hot path checks the bearer token itself "
    "(answer_enquiry, no dependencies), refusals audited; tests/test_lookup.py",
    ("POST", "/fhir/R4/Patient/$cp-lookup"): "not open: the same lookup, answer_enquiry "
    "checks the bearer token itself; tests/test_fhir.py",
    ("GET", "/fhir/R4/metadata"): "FHIR's CapabilityStatement: read before a client has a token",
    ("GET", "/fhir/R4/CodeSystem/{code_system_id}"): "the service's own code systems: no data",
    ("GET", "/fhir/R4/OperationDefinition/Patient-cp-lookup"): "$cp-lookup's definition",
    ("GET", "/openapi.json"): "the API's public contract (committed under openapi/)",
    ("GET", "/docs"): "the contract's interactive page (not served in production)",
    ("GET", "/docs/oauth2-redirect"): "the interactive page's OAuth2 helper (not in production)",
    ("GET", "/redoc"): "the contract's reference page (not served in production)",
    ("GET", "/"): "a redirect to the lookup page, which asks for a session",
    ("GET", "/web/static/app.css"): "the pages' stylesheet, the same for everyone",
    ("GET", "/web/sign-in"): "the sign-in form",
    ("POST", "/web/sign-in"): "the sign-in itself: the password grant, checked and audited",
}


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    if dependant.call is not None:
        yield dependant.call
    for sub in dependant.dependencies:
        yield from _calls(sub)


def routes(app: FastAPI) -> Iterator[tuple[str, str, bool]]:
    """(method, path, authenticated) for every route ``app`` serves; authenticated when a
    dependency of the route (its router's included) is one of AUTHENTICATORS."""
    for route in iter_route_contexts(app.routes):
        dependant = getattr(route, "dependant", None)  # None: Starlette's own routes
        authenticated = dependant is not None and not AUTHENTICATORS.isdisjoint(_calls(dependant))
        for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
            yield method, route.path_format or route.path, authenticated


def unauthenticated(app: FastAPI) -> set[tuple[str, str]]:
    """The routes without a principal that are not listed as open."""
    return {
        (method, path)
        for method, path, authenticated in routes(app)
        if not authenticated and (method, path) not in OPEN
    }


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    """The app as built, not started: the routes need no database. In the test
    environment, which serves the most routes (the interactive pages too)."""
    directory: Path = tmp_path_factory.mktemp("routes")
    return create_app(
        Settings(
            environment=Environment.test,
            database_url=f"sqlite+aiosqlite:///{directory / 'unused.sqlite3'}",
            key_dir=directory,
        )
    )


def test_every_route_names_its_caller_unless_listed_as_open(app: FastAPI) -> None:
    assert unauthenticated(app) == set()


def test_every_open_route_listed_exists_and_is_open(app: FastAPI) -> None:
    """The list says what is open now: a route that has since gained its principal, or
    gone, leaves it."""
    served = {(method, path): authenticated for method, path, authenticated in routes(app)}
    assert {route for route in OPEN if route not in served} == set()
    assert {route for route in OPEN if served[route]} == set()


def test_the_api_and_the_web_pages_are_walked(app: FastAPI) -> None:
    walked = {(method, path) for method, path, authenticated in routes(app) if authenticated}
    assert ("GET", "/v1/register/entries") in walked
    assert ("POST", "/v1/admin/organisations") in walked  # its router's dependency
    assert ("GET", "/web/lookup") in walked
    assert ("POST", "/web/sign-out") in walked


def test_a_route_without_a_principal_is_found(app: FastAPI) -> None:
    forgetful = create_app(app.state.settings)

    @forgetful.get("/v1/forgotten")
    async def forgotten() -> dict[str, str]:
        return {}

    @forgetful.post("/web/forgotten")
    async def forgotten_page() -> dict[str, str]:
        return {}

    assert unauthenticated(forgetful) == {("GET", "/v1/forgotten"), ("POST", "/web/forgotten")}
