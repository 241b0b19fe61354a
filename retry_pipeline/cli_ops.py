"""Operator commands: ``retry-pipeline health`` and ``retry-pipeline registry schema``.

Registered in cli.py with ``main.add_command``.
"""

from __future__ import annotations

import json
import sys

import click

from retry_pipeline.calendar import BusinessCalendar, format_instant
from retry_pipeline.config import Settings
from retry_pipeline.errors import ConfigError

UNHEALTHY = 1


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


@click.command()
@click.option(
    "--only",
    type=click.Choice(["beat", "worker"]),
    default=None,
    help="Check only beat (its healthcheck) or only the workers.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
def health(only: str | None, as_json: bool) -> None:
    """Exit 1 when beat missed two ticks or no worker answered within a slot (heartbeats)."""
    from retry_pipeline.adapters.db import make_engine, make_sessions
    from retry_pipeline.clock import clock_from
    from retry_pipeline.heartbeat import check, heartbeats

    settings = _settings()
    engine = make_engine(settings.database_url)
    try:
        with make_sessions(engine)() as session:
            beats = heartbeats(session)
    finally:
        engine.dispose()
    now = clock_from(settings.clock_file).now()
    result = check(beats, BusinessCalendar(settings), now, only)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "ok": result.ok,
                    "now": format_instant(now),
                    "problems": result.problems,
                    "beat": None
                    if result.beat is None
                    else {
                        "heartbeat_at": format_instant(result.beat.beat_at),
                        "last_tick_at": format_instant(result.beat.last_tick_at)
                        if result.beat.last_tick_at
                        else None,
                    },
                    "workers": [
                        {"name": w.name, "heartbeat_at": format_instant(w.beat_at)}
                        for w in result.workers
                    ],
                },
                ensure_ascii=False,
            )
        )
    else:
        if result.beat is not None:
            tick = result.beat.last_tick_at
            click.echo(
                f"beat    heartbeat {format_instant(result.beat.beat_at)}, last grid tick "
                f"{format_instant(tick) if tick else 'none yet'}"
            )
        for w in result.workers:
            click.echo(f"worker  {w.name} heartbeat {format_instant(w.beat_at)}")
        for problem in result.problems:
            click.echo(f"unhealthy: {problem}", err=True)
        if result.ok:
            click.echo("healthy")
    if not result.ok:
        sys.exit(UNHEALTHY)


@click.group(name="registry")
def registry_group() -> None:
    """Kei-MOTAS, the external registry the attempts read (docs/registry.md)."""


@registry_group.command(name="schema")
@click.option(
    "--dialect",
    type=click.Choice(["postgresql", "sqlite"]),
    default="postgresql",
    show_default=True,
)
@click.option(
    "--source-schema",
    default="keimotas",
    show_default=True,
    help="Schema of Kei-MOTAS's own tables (the views' FROM).",
)
@click.option("--grant-to", default=None, help="Also GRANT SELECT on the views to this role.")
def registry_schema(dialect: str, source_schema: str, grant_to: str | None) -> None:
    """Print CREATE VIEW statements a Kei-MOTAS DBA runs to give the pipeline its contract."""
    from retry_pipeline.adapters.registry_schema import views_ddl

    if not source_schema.replace("_", "").isalnum():
        raise click.BadParameter("a plain SQL identifier", param_hint="--source-schema")
    if grant_to is not None and not grant_to.replace("_", "").isalnum():
        raise click.BadParameter("a plain SQL identifier", param_hint="--grant-to")
    click.echo(views_ddl(dialect, source_schema, grant_to))
