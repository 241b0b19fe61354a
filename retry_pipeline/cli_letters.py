"""``retry-pipeline dead-letters``: list refused messages, and purge old ones (retention)."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

import click

from retry_pipeline.calendar import format_instant
from retry_pipeline.config import Settings
from retry_pipeline.errors import ConfigError
from retry_pipeline.model import DeadLetter

_AGE = re.compile(r"^\s*(\d{1,6})\s*([dhm])\s*$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


class Age(click.ParamType):  # type: ignore[type-arg]
    """An age such as ``90d``, ``12h`` or ``30m`` (days, hours, minutes)."""

    name = "AGE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, timedelta):
            return value
        found = _AGE.match(str(value))
        if not found or int(found.group(1)) < 1:
            self.fail(f"expected an age such as 90d, 12h or 30m, got {value!r}", param, ctx)
        return timedelta(**{_UNITS[found.group(2)]: int(found.group(1))})


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def _as_json(d: DeadLetter) -> str:
    return json.dumps(
        {
            "id": d.id,
            "task": d.task,
            "reason": d.reason,
            "payload": d.payload,
            "received_at": format_instant(d.received_at),
            "size": d.size,
            "sha256": d.sha256,
            "headers": d.headers,
        },
        ensure_ascii=False,
    )


@click.group(name="dead-letters", invoke_without_command=True)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def dead_letters(ctx: click.Context, limit: int, as_json: bool) -> None:
    """Refused messages, newest first, with the reason and the body's first 64 KiB."""
    if ctx.invoked_subcommand is not None:
        return
    from retry_pipeline.adapters.store import RetryStore

    store = RetryStore.from_url(_settings().database_url)
    with store.unit() as u:
        letters = u.dead_letters.newest(limit)
    for d in letters:
        if as_json:
            click.echo(_as_json(d))
        else:
            click.echo(
                f"#{d.id} {format_instant(d.received_at)} {d.task}\n"
                f"  reason:  {d.reason}\n  size:    {d.size} bytes, sha256 {d.sha256}\n"
                f"  payload: {d.payload}"
            )
    if not letters and not as_json:
        click.echo("no dead letters", err=True)


@dead_letters.command(name="purge")
@click.option("--older-than", "older_than", type=Age(), required=True, help="e.g. 90d, 12h, 30m.")
def purge(older_than: timedelta) -> None:
    """Delete dead letters received longer ago than --older-than (retention)."""
    from retry_pipeline.adapters.store import RetryStore
    from retry_pipeline.clock import clock_from

    settings = _settings()
    before = clock_from(settings.clock_file).now() - older_than
    store = RetryStore.from_url(settings.database_url)
    with store.unit() as u:
        purged = u.dead_letters.purge(before)
    click.echo(json.dumps({"purged": purged, "older_than_s": int(older_than.total_seconds())}))
