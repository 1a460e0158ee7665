"""`cpr register`: a custodian imports a register file through the API (so it is audited
and checked exactly as `POST /v1/register/imports` checks it)."""

from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import click
import httpx

from app.apiclient import (
    EXIT_BAD_INPUT,
    CommandError,
    body_of,
    progress,
    refusal,
    request,
    sign_in,
    sign_in_options,
)
from app.register.bulk import LiveIndex, every_problem
from app.register.csvformat import (
    ACCEPTED_CATEGORIES,
    DATE_FORMATS,
    RowProblem,
    parse_csv,
    plural,
)
from app.register.service import entry_values

UPLOAD_CHUNK = 256 * 1024
SHOWN_PROBLEMS = 50


@click.group("register")
def register_group() -> None:
    """Your authority's part of the register."""


IMPORT_EPILOG = f"""\b
Dates: {DATE_FORMATS}.
Categories: {ACCEPTED_CATEGORIES}
(the words in any case, or the codes), several separated by ;.
\b
Exit codes: 0 imported; 2 the file has problems (each one listed on stderr by
row and column; nothing was imported), or bad options; 3 refused (sign-in or
permission); 4 the service cannot be reached or is unavailable.
"""


@register_group.command("import", epilog=IMPORT_EPILOG)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@sign_in_options
@click.option("--timeout", default=300, show_default=True, help="Seconds to wait for the import.")
def import_file(file: Path, url: str, username: str, password: str, timeout: int) -> None:
    """Import FILE (CSV, columns in the README): every row, or none if any row is wrong.

    The rows are checked here first, so a bad file is reported before it is sent;
    the service checks them again, and against the register, before it imports.
    """
    body = file.read_bytes()
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CommandError("the file is not UTF-8 text", EXIT_BAD_INPUT) from exc
    lines = max(text.count("\n"), 1)
    with progress("Checking rows", lines) as step:
        rows, problems = parse_csv(text, date.today(), progress=step)
        values = [entry_values(row.data) for row in rows]
        problems = every_problem(rows, values, problems, LiveIndex())
    if problems:
        _report(problems)
        message = f"{plural(len(problems), 'problem')}: nothing was sent or imported"
        raise CommandError(message, EXIT_BAD_INPUT)

    with httpx.Client(base_url=url, timeout=timeout) as http:
        headers = sign_in(http, username, password)
        with progress("Sending", len(body)) as step:
            response = request(
                http,
                "POST",
                "/v1/register/imports",
                headers={**headers, "Content-Type": "text/csv"},
                content=_chunks(body, step),
            )
    answer = body_of(response)
    if response.status_code == 422 and answer.get("code") == "invalid_rows":
        _report([RowProblem(**error) for error in answer.get("errors", [])])
        raise CommandError(f"{answer.get('detail')}", EXIT_BAD_INPUT)
    if response.status_code != 201:
        raise refusal(response)
    click.echo(
        f"imported {plural(answer['imported'], 'entry')} (import {answer['import_id']}, "
        f"file sha256 {answer['sha256']})"
    )


def _chunks(body: bytes, sent: Callable[[int], None]) -> Iterator[bytes]:
    for start in range(0, len(body), UPLOAD_CHUNK):
        chunk = body[start : start + UPLOAD_CHUNK]
        yield chunk
        sent(len(chunk))


def _report(problems: list[RowProblem]) -> None:
    for problem in problems[:SHOWN_PROBLEMS]:
        where = f"row {problem.row}" + (f", {problem.column}" if problem.column else "")
        click.echo(f"{where}: {problem.problem}", err=True)
    if len(problems) > SHOWN_PROBLEMS:
        click.echo(f"… and {len(problems) - SHOWN_PROBLEMS} more", err=True)
