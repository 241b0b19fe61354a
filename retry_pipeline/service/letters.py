"""The one way a refused message is kept: a dead letter with its reason and raw body."""

from __future__ import annotations

import json
import logging
from typing import Any

from retry_pipeline.model import Receipt
from retry_pipeline.service.context import Deps
from retry_pipeline.service.receipts import keep_receipts

log = logging.getLogger(__name__)


def raw_text(payload: Any) -> str:
    """A decoded body as text: JSON when it is JSON-like, else its repr."""
    try:
        return json.dumps(payload, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(payload)


def keep_dead_letter(
    deps: Deps, task: str, reason: str, raw: str, receipt: Receipt | None = None
) -> int:
    """Store the refused message (``raw``: its body as text); its dead-letter id.

    A refused report's ``receipt`` (DESIGN 11) is written in the same transaction.
    """
    now = deps.clock.now()
    with deps.store.unit() as u:
        letter = u.dead_letters.add(task, reason, raw, now)
        keep_receipts(deps, u, [receipt] if receipt else [], now)
    log.error("refused %s (dead letter %d): %s", task, letter, reason)
    return letter
