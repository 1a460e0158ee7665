"""The work beside the answers: sealing and checkpointing the log, deriving notifications
and delivering webhooks. One class, started and stopped the same way wherever it runs:
in each API process (the embedded default) or in `cpr worker` (app/worker.py)."""

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import suppress

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.audit.chain import CheckpointSigner, CheckpointVerifier, SigningRefused
from app.audit.sealing import SealingBusy, Sequencer, verifier_keys_path
from app.config import Environment, Settings
from app.db import DATABASE_ERRORS
from app.notifications.notifier import Notifier

log = structlog.get_logger()
CANCEL_RETRY_SECONDS = 0.5
# What the final seal may fail with at a stop: the next active sequencer seals it.
_FINAL_SEAL_FAILURES: tuple[type[Exception], ...] = (*DATABASE_ERRORS, SealingBusy, SigningRefused)


def checkpoint_signer(settings: Settings) -> CheckpointSigner:
    """The checkpoint key, following its verifier-key history; made on first use outside
    production (`cpr audit keygen` there)."""
    return CheckpointSigner.from_file(
        settings.checkpoint_key_path,
        settings.audit_log_origin,
        create=settings.environment is not Environment.production,
        verifier_keys=verifier_keys_path(settings),
    )


def checkpoint_verifier(
    settings: Settings, sequencer: Sequencer | None
) -> CheckpointVerifier | None:
    """What the verify endpoint checks signatures with: the sequencer's own, or where
    sealing runs in `cpr worker` (whose key API processes never hold), the published
    verifier-key history (public keys only), re-read as it changes."""
    if sequencer is not None:
        return sequencer.signer.verifier
    history = verifier_keys_path(settings)
    if history.exists():
        return CheckpointVerifier.from_file(history)
    if settings.checkpoint_key_path.exists():
        return checkpoint_signer(settings).verifier
    return None


class Background:
    """The sequencer and the notifier, as tasks on the running loop."""

    def __init__(self, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self._settings = settings
        self.sequencer = (
            Sequencer(sessionmaker, checkpoint_signer(settings), settings)
            if settings.sealing_enabled
            else None
        )
        # Its engine opens no connection until the notifier first runs.
        self.notifier = Notifier.with_own_engine(settings)
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        if self.sequencer is not None:
            self._tasks.append(asyncio.create_task(self.sequencer.run_forever()))
        if self._settings.notifications_enabled:
            self._tasks.append(asyncio.create_task(self.notifier.run_forever()))

    def failed(self) -> bool:
        """A loop that ended by itself: they only end on a bug (faults are retried)."""
        return any(task.done() for task in self._tasks)

    async def stop(self, *, final_checkpoint: bool = True) -> None:
        """Stop the loops, then seal what is left and sign a final checkpoint. The caller
        bounds the wait: a hung database must not hold a stop."""
        pending = set(self._tasks)
        while pending:
            # Again and again: on Python 3.11 a cancel that lands as a timeout fires
            # (asyncio.wait_for, say, after the process was frozen) can be swallowed.
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=CANCEL_RETRY_SECONDS)
        for task in self._tasks:
            if not task.cancelled() and task.exception() is not None:
                log.error("background_loop_failed", error_type=type(task.exception()).__name__)
        self._tasks.clear()
        await self.notifier.close()
        if self.sequencer is not None and final_checkpoint:
            try:
                await self.sequencer.run_once(checkpoint=True)
            except _FINAL_SEAL_FAILURES as exc:
                # The next active sequencer seals it; nothing is lost.
                log.error("final_seal_failed", error_type=type(exc).__name__)


async def shut_down(
    settings: Settings, engine: AsyncEngine, stop: Callable[[], Awaitable[None]] | None
) -> None:
    """The end of a process's lifespan (the API's or the worker's), bounded whatever the
    database does: ``stop`` (the background work's, with its final seal), then the pool."""
    try:
        async with asyncio.timeout(settings.shutdown_timeout_seconds):
            if stop is not None:
                await stop()
    except TimeoutError:
        log.error("shutdown_timed_out", seconds=settings.shutdown_timeout_seconds)
    with suppress(TimeoutError):
        async with asyncio.timeout(1):
            await engine.dispose()
