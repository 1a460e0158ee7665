"""The committed OpenAPI document is the one the app serves."""

import json
from pathlib import Path

import httpx

COMMITTED = Path(__file__).resolve().parent.parent / "openapi" / "openapi.json"


async def test_served_openapi_matches_committed_document(client: httpx.AsyncClient) -> None:
    served = (await client.get("/openapi.json")).json()
    assert served == json.loads(COMMITTED.read_text()), (
        "openapi/openapi.json is stale: run `make openapi` and commit the result"
    )
