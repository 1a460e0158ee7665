"""What the `cpr` commands that go through the API (lookup, register import) share: the
service's address, signing in, and one clear line on stderr for every way a call fails,
with an exit code a script can tell apart (README, The command line)."""

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click
import httpx

# Exit codes of `cpr lookup`, `cpr register import` and `cpr audit verify`.
EXIT_FAILED = 1  # audit verify: the log does not verify; anything else unforeseen
EXIT_BAD_INPUT = 2  # click's own usage error, and input the service refused as invalid
EXIT_REFUSED = 3  # sign-in or the request refused (not permitted, purpose, volume limit)
EXIT_UNAVAILABLE = 4  # the service (or its database) cannot be reached or is down

URL_HELP = "The cp-register service (env CPR_URL); by default where `make run` serves (PORT)."


def default_url() -> str:
    """Where `make run` serves: its PORT, else 8000."""
    return f"http://127.0.0.1:{os.environ.get('PORT') or '8000'}"


Command = TypeVar("Command", bound=Callable[..., Any])


def sign_in_options(command: Command) -> Command:
    """``--url``, ``--username`` and ``--password``, for every command that signs in to
    the API (``cpr lookup``, ``cpr register import``), in that order in its help."""
    options = (
        click.option(
            "--url",
            default=default_url,
            show_default="http://127.0.0.1:${PORT:-8000}",
            envvar="CPR_URL",
            help=URL_HELP,
        ),
        click.option("--username", prompt=True, envvar="CPR_USERNAME", help="Env CPR_USERNAME."),
        click.option(
            "--password",
            prompt=True,
            hide_input=True,
            envvar="CPR_PASSWORD",
            help="Env CPR_PASSWORD; asked for, hidden, when not set.",
        ),
    )
    for option in reversed(options):  # decorators apply bottom up
        command = option(command)
    return command


class CommandError(click.ClickException):
    """One line on stderr and a documented exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        # click types exit_code as a class variable, but reads it from the instance.
        self.exit_code = exit_code  # type: ignore[misc]


def unreachable(url: str, exc: Exception) -> CommandError:
    reason = type(exc).__name__ if not str(exc) else str(exc)
    return CommandError(
        f"cannot reach the cp-register service at {url} ({reason}): check --url or CPR_URL; "
        "if a child may be at risk now, follow your safeguarding procedure meanwhile",
        EXIT_UNAVAILABLE,
    )


def request(http: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """``http.request``, with a transport failure as one line (exit 4), not a traceback."""
    try:
        return http.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise unreachable(str(http.base_url), exc) from exc


def body_of(response: httpx.Response) -> dict[str, Any]:
    """The JSON object answered, or {} (a proxy's HTML page, an empty body)."""
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def exit_code_for(status: int) -> int:
    if status in (400, 409, 413, 415, 422):
        return EXIT_BAD_INPUT
    if status in (401, 403, 404, 429):
        return EXIT_REFUSED
    return EXIT_UNAVAILABLE


def refusal(response: httpx.Response) -> CommandError:
    """A problem document (RFC 9457) as one line: its title and detail (which carries
    whom to call on an outage or a volume limit), or the fields it names."""
    body = body_of(response)
    if not body:
        text = f"the service answered {response.status_code} {response.reason_phrase}"
        return CommandError(text, exit_code_for(response.status_code))
    return CommandError(problem_text(body), exit_code_for(response.status_code))


def sign_in(http: httpx.Client, username: str, password: str) -> dict[str, str]:
    """A staff user's bearer header, from the password grant."""
    signed_in = request(
        http,
        "POST",
        "/oauth/token",
        data={"grant_type": "password", "username": username, "password": password},
    )
    body = body_of(signed_in)
    if signed_in.status_code != 200 or "access_token" not in body:
        if "error" not in body:
            raise refusal(signed_in)
        reason = body.get("error_description") or body["error"]
        # A wrong password is OAuth's 400 invalid_grant: refused, not a usage error.
        code = EXIT_UNAVAILABLE if signed_in.status_code >= 500 else EXIT_REFUSED
        raise CommandError(f"sign-in refused: {reason}", code)
    return {"Authorization": f"Bearer {body['access_token']}"}


def problem_text(body: dict[str, Any]) -> str:
    problems = "; ".join(
        f"{'.'.join(str(part) for part in e.get('loc', ()))}: {e.get('msg', '')}"
        for e in body.get("errors") or []
        if isinstance(e, dict) and "loc" in e
    )
    title = body.get("title") or f"refused ({body.get('status', '?')})"
    return " ".join(f"{title}: {body.get('detail') or problems}".split())


@contextmanager
def progress(label: str, length: int) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr that shows 100 % once the work inside is done, whatever
    the steps added up to (a header, blank lines and quoted line breaks are no rows).
    Not on a terminal, the label and then the same 100 % as a line of its own."""
    with click.progressbar(length=length, label=label, file=sys.stderr) as bar:
        yield bar.update
        bar.update(max(0, length - bar.pos))
    if not sys.stderr.isatty():
        click.echo(f"{label}: 100 %", err=True)
