"""The one way a refused message is kept: a dead letter with its reason and raw body."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from retry_pipeline.model import LetterBody, Receipt
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
    deps: Deps,
    task: str,
    reason: str,
    raw: str | bytes,
    receipt: Receipt | None = None,
    *,
    headers: Mapping[str, Any] | None = None,
    whole: LetterBody | None = None,
) -> int:
    """Store the refused message (``raw``: its body, or its head with ``whole``); its id.

    A refused report's ``receipt`` (DESIGN 11) is written in the same transaction.
    Raises when the letter could not be stored: the caller must then not acknowledge
    the message.
    """
    now = deps.clock.now()
    with deps.store.unit() as u:
        letter = u.dead_letters.add(task, reason, raw, now, headers=headers, whole=whole)
        keep_receipts(deps, u, [receipt] if receipt else [], now)
    log.error("refused %s (dead letter %d): %s", task, letter, reason)
    return letter


def purge_dead_letters(deps: Deps, older_than: timedelta) -> int:
    """Retention: delete dead letters received more than ``older_than`` ago; how many."""
    before = deps.clock.now() - older_than
    with deps.store.unit() as u:
        purged = u.dead_letters.purge(before)
    log.info("purged %d dead letters received before %s", purged, before.isoformat())
    return purged
