"""Structured JSON logs. Never pass a child's identifiers or a secret to a logger:
those belong in the audit log only."""

import logging
import sys
from typing import Literal

import structlog

_SHARED: list[structlog.typing.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


class _Standard:
    """``sys.stdout`` or ``sys.stderr`` as it is when a line is written, not as it was
    when logging was configured: a logger cached on first use must not keep writing to
    a stream that was swapped out since (a test's captured one, then closed)."""

    def __init__(self, name: Literal["stdout", "stderr"]) -> None:
        self._name = name

    def write(self, text: str) -> int:
        return int(getattr(sys, self._name).write(text))

    def flush(self) -> None:
        getattr(sys, self._name).flush()


def configure_logging(level: str = "INFO", to: Literal["stdout", "stderr"] = "stdout") -> None:
    """structlog for our own lines; uvicorn's and the standard library's rendered the
    same way, so every line on stdout (``cpr``: stderr) is one JSON object."""
    stream = _Standard(to)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=structlog.processors.JSONRenderer(), foreign_pre_chain=_SHARED
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # httpx logs every request URL at INFO: not useful, and a URL is not ours to log.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    structlog.configure(
        processors=[*_SHARED, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(stream),  # type: ignore[arg-type]  # write, flush
        cache_logger_on_first_use=True,
    )
