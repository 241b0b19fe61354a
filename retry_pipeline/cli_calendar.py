"""``retry-pipeline calendar``: business days, and why the others are closed."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta

import click

from retry_pipeline.calendar import LANGUAGES, BusinessCalendar, Language, check_day
from retry_pipeline.cli_checks import BadInput, load_settings
from retry_pipeline.errors import CalendarError


@click.command(name="calendar")
@click.option(
    "--from",
    "start",
    required=True,
    type=click.DateTime(formats=["%Y-%m-%d"]),
    help="First day (YYYY-MM-DD).",
)
@click.option("--days", required=True, type=click.IntRange(1, 3660), help="How many days.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option(
    "--lang",
    "language",
    type=click.Choice(LANGUAGES),
    default="ja",
    show_default=True,
    help="Language of holiday names and closure reasons.",
)
def calendar_cmd(start: datetime, days: int, as_json: bool, language: Language) -> None:
    """List business days, and why the others are closed."""
    calendar = BusinessCalendar(load_settings())
    first: date = start.date()
    try:
        check_day(first)
        check_day(first + timedelta(days=days - 1))
    except CalendarError as exc:
        raise BadInput(str(exc)) from None
    except OverflowError:
        raise BadInput(f"--days {days} from {first.isoformat()} runs past year 9999") from None
    for offset in range(days):
        day = first + timedelta(days=offset)
        reason = calendar.closure_reason(day, language)
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "date": day.isoformat(),
                        "weekday": day.strftime("%a"),
                        "business_day": reason is None,
                        "reason": reason,
                    },
                    ensure_ascii=False,
                )
            )
        else:
            status = "business day" if reason is None else f"closed ({reason})"
            click.echo(f"{day.isoformat()} {day.strftime('%a')}  {status}")
