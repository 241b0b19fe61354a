"""``retry-pipeline``: the command line (click)."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any

import click

from retry_pipeline.calendar import BusinessCalendar, format_instant, parse_instant
from retry_pipeline.cli_checks import BadInput, check_ident, load_settings
from retry_pipeline.cli_errors import ShortErrorGroup
from retry_pipeline.cli_ops import health, registry_group
from retry_pipeline.errors import CalendarError, InvalidInstant
from retry_pipeline.policy import plan_attempts


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


@click.group(cls=ShortErrorGroup)
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
    try:
        result = plan_attempts(detected_at, calendar, close_signals)
    except CalendarError as exc:
        raise BadInput(str(exc)) from None
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


@main.group()
def db() -> None:
    """Database migrations (Alembic)."""


@db.command()
@click.option("--revision", default="head", show_default=True)
def upgrade(revision: str) -> None:
    """Create or migrate the retry table, history, outbox and Kei-MOTAS tables."""
    from alembic.script.revision import RevisionError
    from alembic.util.exc import CommandError

    from retry_pipeline.adapters.migrate import upgrade as run_upgrade

    settings = load_settings()
    if not revision.strip():
        raise BadInput("--revision must not be empty (e.g. head)")
    try:
        run_upgrade(settings.database_url, revision)
    except (CommandError, RevisionError) as exc:
        # Alembic's message repeats the input as it is: shown escaped, on one line.
        shown = str(exc).encode("unicode_escape").decode("ascii")
        raise BadInput(f"--revision {revision!r}: {shown}") from None
    click.echo(f"database at {revision}", err=True)


def _store() -> Any:
    from retry_pipeline.adapters.store import RetryStore

    return RetryStore.from_url(load_settings().database_url)


@main.command()
@click.option("--office", required=True, help="Office code (事務所): only its applications.")
@click.option("--application", default=None, help="One application of that office.")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of text.")
def status(office: str, application: str | None, as_json: bool) -> None:
    """R15: the applications of one office in retry, and their history."""
    from retry_pipeline.views import office_view, render_office_view

    try:
        check_ident("--office", office)
        if application is not None:
            check_ident("--application", application)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    store, settings = _store(), load_settings()
    view = office_view(store, BusinessCalendar(settings), office, application)
    if application is not None and not view["applications"] and not view["ended"]:
        from retry_pipeline.wording import no_record_text

        click.echo(no_record_text(office, application), err=True)
        sys.exit(1)
    click.echo(
        json.dumps(view, ensure_ascii=False, indent=2)
        if as_json
        else render_office_view(view, settings.attempts_per_chain)
    )


@main.command()
@click.option(
    "--at", "at", type=Instant(), default=None, help="When OSS closes today (default: now)."
)
def close(at: datetime | None) -> None:
    """R10: an explicit OSS close signal; parks every live chain once it has come."""
    from retry_pipeline.bootstrap import bootstrap
    from retry_pipeline.tasks import app

    pipeline = bootstrap(load_settings(), app)  # this command's settings, not a cached pipeline
    try:
        parked = pipeline.record_close(at)
    except InvalidInstant as exc:
        raise BadInput(f"--at {exc}") from None
    when = format_instant(at or pipeline.clock.now())
    click.echo(json.dumps({"close_at": when, "parked": parked}))


from retry_pipeline.cli_calendar import calendar_cmd  # noqa: E402
from retry_pipeline.cli_simulation import demo, fault_matrix, scenario_group, simulate  # noqa: E402

for _command in (calendar_cmd, simulate, fault_matrix, scenario_group, demo):
    main.add_command(_command)

main.add_command(health)
main.add_command(registry_group)

from retry_pipeline.cli_letters import dead_letters  # noqa: E402
from retry_pipeline.web.cli import user_group, web  # noqa: E402  (the office console)

for _command in (dead_letters, user_group, web):
    main.add_command(_command)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
