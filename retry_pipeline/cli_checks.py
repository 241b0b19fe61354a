"""Input checks the commands share: only what the calendar can handle gets through."""

from __future__ import annotations

import os
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from retry_pipeline.calendar import check_day, parse_instant
from retry_pipeline.config import Settings
from retry_pipeline.errors import CalendarError, ConfigError, InvalidInstant

if TYPE_CHECKING:
    from simulation.scenario import Scenario


USAGE_ERROR = 2  # click's exit code for bad input


class BadInput(click.ClickException):
    """Input the command cannot use: one ``Error:`` line, exit 2."""

    exit_code = USAGE_ERROR


def load_settings() -> Settings:
    """Settings from the environment, or a clear usage error."""
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def check_scenario_dates(scenario: Scenario) -> None:
    """Refuse (ValueError) a scenario instant or date outside the calendar's years."""
    instants: list[tuple[str, datetime]] = [
        (f"close_signals[{i}]", t) for i, t in enumerate(scenario.close_signals)
    ]
    days: list[tuple[str, date]] = []
    if scenario.config.new_inspection_retry_from is not None:
        days.append(("config.new_inspection_retry_from", scenario.config.new_inspection_retry_from))
    for i, cert in enumerate(scenario.certificates):
        where = f"certificates[{i}] ({cert.id})"
        instants.append((f"{where}.available_at", cert.available_at))
        if cert.deleted_at is not None:
            instants.append((f"{where}.deleted_at", cert.deleted_at))
        for field in ("inspected_on", "issued_on"):
            day = getattr(cert, field, None)
            if isinstance(day, date):
                days.append((f"{where}.{field}", day))
    for where, instant in instants:
        try:
            parse_instant(instant.isoformat())
        except InvalidInstant as exc:
            raise ValueError(f"{where}: {exc}") from None
    for where, day in days:
        try:
            check_day(day)
        except CalendarError as exc:
            raise ValueError(f"{where}: {exc}") from None


def check_ident(option: str, value: str) -> None:
    """Refuse (ValueError) an empty office or application id, or one with control characters.

    Anything else is looked up literally (bound parameters): it finds nothing.
    """
    if not value.strip() or not value.isprintable() or len(value) > 200:
        raise ValueError(
            f"{option} {value!r} is not an id: 1-200 printable characters, not only spaces"
        )


def writable_output(output: str) -> Path:
    """``--output``'s path, its folder made if missing; a clear error before any work."""
    path = Path(output)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"--output {output}: cannot make its folder ({exc.strerror})") from None
    if path.is_dir():
        raise BadInput(f"--output {output}: is a folder; name a file in it")
    if path.is_symlink() and not path.exists():
        raise BadInput(f"--output {output}: a link to nothing")
    if path.exists() and not path.is_file():
        raise BadInput(f"--output {output}: not a regular file")
    # Tried for real (os.access says yes to root whatever the file system says): an
    # existing file read and written without a change (a command may keep part of it),
    # a new one made and removed at once, so nothing stays if the run then fails.
    try:
        if path.exists():
            with path.open("r+"):
                pass
        else:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            path.unlink()
    except OSError as exc:
        raise BadInput(f"--output {output}: not writable ({exc.strerror})") from None
    return path
