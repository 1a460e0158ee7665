"""The API's and the worker's start-up objects are kept out of Python's full garbage
collections (app/heap.py): without it a full pass over some 140,000 of them stops the
process for 60-90 ms every few seconds under load, the lookups' and reviews' p99
(docs/performance.md)."""

import gc
from collections.abc import Callable

import pytest
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app
from app.worker import create_worker_app


@pytest.mark.parametrize("build", [create_app, create_worker_app], ids=["api", "worker"])
async def test_start_up_objects_are_out_of_full_collections_once_started(
    settings: Settings, build: Callable[[Settings], FastAPI]
) -> None:
    gc.unfreeze()
    app = build(settings)
    assert gc.get_freeze_count() == 0
    async with app.router.lifespan_context(app):
        assert gc.get_freeze_count() > 50_000
