"""The one way a refused message is kept: a dead letter with its reason and raw body."""

from __future__ import annotations

import json
import logging
from typing import Any

from retry_pipeline.service.context import Deps

log = logging.getLogger(__name__)


def raw_text(payload: Any) -> str:
    """A decoded body as text: JSON when it is JSON-like, else its repr."""
    try:
        return json.dumps(payload, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(payload)


def keep_dead_letter(deps: Deps, task: str, reason: str, raw: str) -> int:
    """Store the refused message (``raw``: its body as text); its dead-letter id."""
    with deps.store.unit() as u:
        letter = u.dead_letters.add(task, reason, raw, deps.clock.now())
    log.error("refused %s (dead letter %d): %s", task, letter, reason)
    return letter
