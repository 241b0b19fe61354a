"""The baseline of the benchmark: a raw Celery no-op task on the same app and worker."""

from retry_pipeline.tasks import app


@app.task(name="bench.noop")
def noop() -> None:
    """Does nothing: what a Celery round trip costs on this broker and pool."""
