"""`cpr register`: a custodian imports a register file through the API (so it is audited
and checked exactly as `POST /v1/register/imports` checks it)."""

import sys
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import click
import httpx

from app.apiclient import problem_text, sign_in
from app.register.bulk import LiveIndex, duplicate_problems
from app.register.csvformat import RowProblem, parse_csv
from app.register.service import entry_values

UPLOAD_CHUNK = 256 * 1024
SHOWN_PROBLEMS = 50


@click.group("register")
def register_group() -> None:
    """Your authority's part of the register."""


@register_group.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--url",
    default="http://127.0.0.1:8000",
    show_default=True,
    envvar="CPR_URL",
    help="The cp-register service.",
)
@click.option("--username", prompt=True, envvar="CPR_USERNAME")
@click.option("--password", prompt=True, hide_input=True, envvar="CPR_PASSWORD")
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
        raise click.ClickException("the file is not UTF-8 text") from exc
    lines = max(text.count("\n"), 1)
    with click.progressbar(length=lines, label="Checking rows", file=sys.stderr) as bar:
        rows, problems = parse_csv(text, date.today(), progress=bar.update)
    problems = problems or duplicate_problems(
        rows, [entry_values(row.data) for row in rows], LiveIndex()
    )
    if problems:
        _report(problems)
        raise click.ClickException(f"{len(problems)} problems: nothing was sent or imported")

    with httpx.Client(base_url=url, timeout=timeout) as http:
        headers = sign_in(http, username, password)
        with click.progressbar(length=len(body), label="Sending", file=sys.stderr) as bar:
            response = http.post(
                "/v1/register/imports",
                headers={**headers, "Content-Type": "text/csv"},
                content=_chunks(body, bar.update),
            )
    answer = response.json()
    if response.status_code == 422 and answer.get("title") == "Import refused":
        _report([RowProblem(**error) for error in answer.get("errors", [])])
        raise click.ClickException(f"{answer['detail']}")
    if response.status_code != 201:
        raise click.ClickException(problem_text(answer))
    click.echo(
        f"imported {answer['imported']} entries (import {answer['import_id']}, "
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
