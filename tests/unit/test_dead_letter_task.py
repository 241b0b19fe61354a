"""``DeadLetterTask.__call__`` runs the body under the worker's request (retries keep working)."""

from __future__ import annotations

from typing import Any

from celery import Celery

from retry_pipeline.worker import DeadLetterTask


def test_the_body_sees_the_real_request_so_autoretry_still_retries() -> None:
    app = Celery("probe", set_as_current=False)

    @app.task(bind=True, base=DeadLetterTask, name="probe.request")
    def probe(self: Any) -> tuple[Any, ...]:
        return (self.request.id, self.request.called_directly, self.request.retries)

    result = probe.apply(task_id="T-1", retries=3)
    assert result.get() == ("T-1", False, 3)
    # Called directly (tests, the CLI) it still runs.
    assert probe()[1] is True
    app.close()
