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


_TIME_SCALE = click.option(
    "--time-scale",
    default=600.0,
    show_default=True,
    type=click.FloatRange(1, 10_000),
    help="Simulated seconds per real second.",
)
_BROKER_URL = click.option(
    "--broker-url", default=None, help="Redis URL (default: local, else a private one)."
)


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


def _store() -> Any:
    from retry_pipeline.adapters.store import RetryStore

    return RetryStore.from_url(load_settings().database_url)


@main.command()
@click.argument("scenario_file", type=click.Path(dir_okay=False))
@_TIME_SCALE
@_BROKER_URL
@click.option(
    "--redis-db",
    default=13,
    show_default=True,
    type=click.IntRange(0, 15),
    help="Redis database of the simulation on a shared server (flushed).",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    default=None,
    help="Keep the database and logs here.",
)
@click.option("--timeout", "timeout_s", default=900.0, show_default=True, type=float)
@click.option(
    "--faults", default="", help="Inject real faults, e.g. kill-worker,flush-redis,kill-beat."
)
@click.option(
    "--fault-seed",
    default=0,
    show_default=True,
    type=int,
    help="Seed that chooses the moments of the faults.",
)
def simulate(
    scenario_file: str,
    time_scale: float,
    broker_url: str | None,
    redis_db: int,
    workdir: str | None,
    timeout_s: float,
    faults: str,
    fault_seed: int,
) -> None:
    """Run a scenario through the real worker, beat and Redis; print one JSON report."""
    from pathlib import Path

    from retry_pipeline.sim.faults import parse_faults
    from retry_pipeline.sim.harness import Options, SimulationError, run_simulation
    from retry_pipeline.sim.scenario import ScenarioError, load_scenario

    try:
        scenario = load_scenario(scenario_file)
        fault_names = parse_faults(faults)
    except (ScenarioError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    options = Options(
        time_scale=time_scale,
        broker_url=broker_url,
        redis_db=redis_db,
        timeout_s=timeout_s,
        workdir=Path(workdir) if workdir else None,
        faults=fault_names,
        fault_seed=fault_seed,
    )
    try:
        report, stats = run_simulation(scenario, options, lambda m: click.echo(m, err=True))
    except SimulationError as exc:
        click.echo(f"simulation failed: {exc}", err=True)
        sys.exit(1)
    click.echo(
        f"done in {stats.wall_s:.1f} s; faults {stats.faults.injected or 'none'}; restarts "
        f"{stats.restarts or 'none'}; max lateness {stats.max_lateness_slots} slot(s)",
        err=True,
    )
    click.echo(json.dumps(report, ensure_ascii=False, indent=2))


@main.command(name="fault-matrix")
@click.argument("scenario_file", type=click.Path(dir_okay=False))
@click.option("--seeds", default="1,2", show_default=True, help="Fault seeds, comma-separated.")
@click.option("--faults", default="", help="Faults to run (default: all of them).")
@_TIME_SCALE
@click.option(
    "--output",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the Markdown table here (default: stdout).",
)
def fault_matrix(
    scenario_file: str, seeds: str, faults: str, time_scale: float, output: str | None
) -> None:
    """Inject every fault for real and compare with a clean run (docs/reliability.md)."""
    from pathlib import Path

    from retry_pipeline.sim.faults import FAULTS, parse_faults
    from retry_pipeline.sim.matrix import render, run_matrix
    from retry_pipeline.sim.scenario import ScenarioError, load_scenario

    try:
        scenario = load_scenario(scenario_file)
        names = parse_faults(faults) or FAULTS
        seed_list = [int(x) for x in seeds.split(",") if x.strip()]
    except (ScenarioError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    rows, _ = run_matrix(scenario, seed_list, names, time_scale, lambda m: click.echo(m, err=True))
    command = "make faults" if output else f"retry-pipeline fault-matrix {scenario_file}"
    text = render(rows, scenario, seed_list, command)
    if output:
        Path(output).write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text)
    if any(r.chains_lost or r.outcomes_doubled for r in rows):
        sys.exit(1)


@main.command()
@click.option("--office", required=True, help="Office code (事務所): only its applications.")
@click.option("--application", default=None, help="One application of that office.")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of text.")
def status(office: str, application: str | None, as_json: bool) -> None:
    """R15: the applications of one office in retry, and their history."""
    from retry_pipeline.views import office_view, render_office_view

    store = _store()
    view = office_view(store, BusinessCalendar(load_settings()), office, application)
    if application is not None and not view["applications"] and not view["ended"]:
        click.echo(f"application {application} has no retry record at office {office}", err=True)
        sys.exit(1)
    click.echo(
        json.dumps(view, ensure_ascii=False, indent=2) if as_json else render_office_view(view)
    )


@main.command()
@click.option(
    "--at", "at", type=Instant(), default=None, help="When OSS closes today (default: now)."
)
def close(at: datetime | None) -> None:
    """R10: an explicit OSS close signal; parks every live chain once it has come."""
    from retry_pipeline.tasks import service

    pipeline = service()
    when = at or pipeline.clock.now()
    parked = pipeline.record_close(when)
    click.echo(json.dumps({"close_at": format_instant(when), "parked": parked}))


# -- the post-holiday scenario and the demo (the main job) ------------------------


@main.group(name="scenario")
def scenario_group() -> None:
    """Generate scenario files for `retry-pipeline simulate`."""


def _post_holiday_json(applications: int, seed: int, day: datetime | None) -> str:
    from retry_pipeline.sim.linkage import DEFAULT_DAY, post_holiday_scenario

    try:
        data = post_holiday_scenario(applications, seed, day.date() if day else DEFAULT_DAY)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--date") from None
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"


_APPLICATIONS = click.option(
    "--applications",
    default=300,
    show_default=True,
    type=click.IntRange(1, 5000),
    help="Applications that find a certificate missing.",
)
_SEED = click.option("--seed", default=7, show_default=True, type=int, help="Random seed.")
_DATE = click.option(
    "--date",
    "day",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    default=None,
    help="First business day after a holiday (default 2026-05-07, after Golden Week).",
)


@scenario_group.command(name="post-holiday")
@_APPLICATIONS
@_SEED
@_DATE
@click.option("--output", type=click.Path(dir_okay=False), default=None, help="Default: stdout.")
def post_holiday(applications: int, seed: int, day: datetime | None, output: str | None) -> None:
    """A post-holiday morning: linkage backlog, capped batches; same seed, same bytes."""
    from pathlib import Path

    text = _post_holiday_json(applications, seed, day)
    if output is None:
        click.echo(text, nl=False)
    else:
        Path(output).write_text(text, encoding="utf-8")
        click.echo(f"scenario written to {output}", err=True)


@main.command()
@_APPLICATIONS
@_SEED
@_DATE
@_TIME_SCALE
@_BROKER_URL
@click.option(
    "--report",
    "report_file",
    default="var/demo-report.json",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Where the JSON report goes (the scenario goes beside it).",
)
def demo(
    applications: int,
    seed: int,
    day: datetime | None,
    time_scale: float,
    broker_url: str | None,
    report_file: str,
) -> None:
    """The main job: a post-holiday morning through the real pipeline, then the table."""
    import time
    from pathlib import Path

    from retry_pipeline.sim.demo import demo_table
    from retry_pipeline.sim.harness import Options, SimulationError
    from retry_pipeline.sim.harness import simulate as run_simulation
    from retry_pipeline.sim.scenario import Scenario

    started = time.monotonic()
    text = _post_holiday_json(applications, seed, day)
    scenario = Scenario.model_validate(json.loads(text))
    report_path = Path(report_file)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    scenario_path = report_path.with_name(f"{report_path.stem}-scenario.json")
    scenario_path.write_text(text, encoding="utf-8")
    click.echo(
        f"scenario: {applications} applications, seed {seed}, {len(scenario.certificates)} "
        f"certificates -> {scenario_path}; running at x{time_scale:g}",
        err=True,
    )
    options = Options(time_scale=time_scale, broker_url=broker_url)
    try:
        report = run_simulation(scenario, options, lambda m: click.echo(m, err=True))
    except SimulationError as exc:
        click.echo(f"simulation failed: {exc}", err=True)
        sys.exit(1)
    report_path.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", "utf-8")
    click.echo(demo_table(scenario, report))
    click.echo(f"report: {report_path}  scenario: {scenario_path}")
    click.echo(f"wall time {time.monotonic() - started:.0f} s at x{time_scale:g}")


from retry_pipeline.cli_letters import dead_letters  # noqa: E402

main.add_command(dead_letters)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
