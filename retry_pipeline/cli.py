"""``retry-pipeline``: the command line (click)."""

from __future__ import annotations

import json
import sys
from datetime import date, datetime, timedelta
from typing import Any

import click

from retry_pipeline.calendar import BusinessCalendar, format_instant, parse_instant
from retry_pipeline.config import Settings
from retry_pipeline.errors import ConfigError, InvalidInstant
from retry_pipeline.policy import plan_attempts

USAGE_ERROR = 2


class Instant(click.ParamType):  # type: ignore[type-arg]
    """An ISO 8601 date-time with a UTC offset (``Z`` accepted); naive input is refused."""

    name = "ISO8601"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime):
            return value
        try:
            return parse_instant(str(value))
        except InvalidInstant as exc:
            self.fail(str(exc), param, ctx)


def load_settings() -> Settings:
    """Settings from the environment, or a clear usage error."""
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


@click.group()
@click.version_option(package_name="retry-pipeline")
def main() -> None:
    """Re-check missing electronic certificates before auto-correcting (SPEC R1–R16)."""


@main.command()
@click.option(
    "--detected-at", required=True, type=Instant(), help="When the certificate was found missing."
)
@click.option(
    "--close-signal",
    "close_signals",
    multiple=True,
    type=Instant(),
    help="An explicit OSS close (repeatable).",
)
def plan(detected_at: datetime, close_signals: tuple[datetime, ...]) -> None:
    """Print the attempts a chain would make if the certificate never arrives (R6–R13)."""
    calendar = BusinessCalendar(load_settings())
    result = plan_attempts(detected_at, calendar, close_signals)
    click.echo(
        json.dumps(
            {
                "detected_at": format_instant(result.detected_at),
                "attempts": [format_instant(a) for a in result.attempts],
                "parked_after": result.parked_after,
                "auto_correct_at": format_instant(result.auto_correct_at),
            },
            ensure_ascii=False,
        )
    )


@main.command(name="calendar")
@click.option(
    "--from",
    "start",
    required=True,
    type=click.DateTime(formats=["%Y-%m-%d"]),
    help="First day (YYYY-MM-DD).",
)
@click.option("--days", required=True, type=click.IntRange(1, 3660), help="How many days.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def calendar_cmd(start: datetime, days: int, as_json: bool) -> None:
    """List business days, and why the others are closed."""
    calendar = BusinessCalendar(load_settings())
    first: date = start.date()
    for offset in range(days):
        day = first + timedelta(days=offset)
        reason = calendar.closure_reason(day)
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "date": day.isoformat(),
                        "weekday": day.strftime("%a"),
                        "business_day": reason is None,
                        "reason": reason,
                    }
                )
            )
        else:
            status = "business day" if reason is None else f"closed ({reason})"
            click.echo(f"{day.isoformat()} {day.strftime('%a')}  {status}")


@main.group()
def db() -> None:
    """Database migrations (Alembic)."""


@db.command()
@click.option("--revision", default="head", show_default=True)
def upgrade(revision: str) -> None:
    """Create or migrate the retry table, history, outbox and Kei-MOTAS tables."""
    from retry_pipeline.adapters.migrate import upgrade as run_upgrade

    settings = load_settings()
    run_upgrade(settings.database_url, revision)
    click.echo(f"database at {revision}", err=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
