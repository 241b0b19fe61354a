"""Logging: ``RETRY_PIPELINE_LOG_FORMAT=json`` gives one JSON object per line.

Worker, beat and web call ``configure``. A line that concerns one application carries
``application`` and ``chain_id``: from the record's ``extra``, else from the context
the current task or request set (``bind``), else a chain id found in the message.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

ENV = "RETRY_PIPELINE_LOG_FORMAT"
_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "retry_pipeline_log_context", default=None
)
_CHAIN_ID = re.compile(r"\b([0-9a-f]{32})\b")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def json_enabled(environ: dict[str, str] | None = None) -> bool:
    """Whether logs are to be JSON (the setting is ``json``; anything else is text)."""
    env = os.environ if environ is None else environ
    return env.get(ENV, "").strip().lower() == "json"


@contextmanager
def bind(**fields: str | None) -> Iterator[None]:
    """Within the block, every log line carries these fields (``application``, ``chain_id``)."""
    token = _context.set({**(_context.get() or {}), **{k: v for k, v in fields.items() if v}})
    try:
        yield
    finally:
        _context.reset(token)


def set_context(**fields: str | None) -> None:
    """Bind fields until ``clear_context`` (for Celery's prerun/postrun signals)."""
    _context.set({k: v for k, v in fields.items() if v})


def clear_context() -> None:
    _context.set(None)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and the context fields."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        out.update(_context.get() or {})
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, str | int | float | bool) else str(value)
        if "chain_id" not in out:
            found = _CHAIN_ID.search(message)
            if found:
                out["chain_id"] = found.group(1)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def use_json(logger: logging.Logger) -> None:
    """Switch every handler of ``logger`` to JSON lines (a stderr one if it has none)."""
    if not logger.handlers:
        logger.addHandler(logging.StreamHandler(sys.stderr))
    for handler in logger.handlers:
        handler.setFormatter(JsonFormatter())


def configure(level: int = logging.INFO) -> None:
    """Root logging for the web process (text unless ``RETRY_PIPELINE_LOG_FORMAT=json``)."""
    root = logging.getLogger()
    root.setLevel(level)
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    if json_enabled():
        logging.captureWarnings(True)
        use_json(root)
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            logging.getLogger(name).handlers.clear()
            logging.getLogger(name).propagate = True


def task_fields(args: Any, kwargs: Any) -> dict[str, str | None]:
    """``application`` / ``chain_id`` from a task's arguments, when it concerns one."""
    first = args[0] if args else None
    fields: dict[str, str | None] = {}
    message = first if isinstance(first, dict) else kwargs if isinstance(kwargs, dict) else {}
    if isinstance(message.get("application"), str):
        fields["application"] = message["application"]
    if isinstance(message.get("chain_id"), str):
        fields["chain_id"] = message["chain_id"]
    if isinstance(first, str) and _CHAIN_ID.fullmatch(first):
        fields["chain_id"] = first  # retry_pipeline.attempt(chain_id, attempt_no, slot)
    return fields


def connect_celery() -> None:
    """Make worker and beat log JSON lines when asked, with task context."""
    from celery.signals import (
        after_setup_logger,
        after_setup_task_logger,
        task_postrun,
        task_prerun,
    )

    def _setup(logger: logging.Logger, **_: Any) -> None:
        if json_enabled():
            use_json(logger)

    if json_enabled():
        logging.captureWarnings(True)  # Python warnings become JSON lines too

    def _prerun(args: Any = None, kwargs: Any = None, **_: Any) -> None:
        set_context(**task_fields(args or (), kwargs or {}))

    def _postrun(**_: Any) -> None:
        clear_context()

    after_setup_logger.connect(_setup, weak=False)
    after_setup_task_logger.connect(_setup, weak=False)
    task_prerun.connect(_prerun, weak=False)
    task_postrun.connect(_postrun, weak=False)
