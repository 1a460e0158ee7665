"""What the `cpr` commands that go through the API (lookup, register import) share."""

from typing import Any

import click
import httpx


def sign_in(http: httpx.Client, username: str, password: str) -> dict[str, str]:
    """A staff user's bearer header, from the password grant."""
    signed_in = http.post(
        "/oauth/token",
        data={"grant_type": "password", "username": username, "password": password},
    )
    if signed_in.status_code != 200:
        raise click.ClickException(
            f"sign-in refused: {signed_in.json().get('error_description', signed_in.text)}"
        )
    return {"Authorization": f"Bearer {signed_in.json()['access_token']}"}


def problem_text(body: dict[str, Any]) -> str:
    problems = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in body.get("errors", []))
    return f"{body.get('title')}: {body.get('detail') or problems}"
