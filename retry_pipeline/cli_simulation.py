"""The simulation's commands: ``demo``, ``simulate``, ``scenario``, ``fault-matrix``.

They import ``simulation`` (the source checkout's harness, not in the wheel) only when
they run, and exit 2 with one line where it is not installed.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime

import click

from retry_pipeline.cli_checks import USAGE_ERROR, check_scenario_dates, writable_output
from retry_pipeline.errors import CalendarError


def require_simulation() -> None:
    """The simulation lives in the source checkout, not the wheel: exit 2 without it."""
    import importlib.util

    if importlib.util.find_spec("simulation") is None:
        click.echo(
            "the simulation is not installed: it comes with the source checkout (`make install`)",
            err=True,
        )
        sys.exit(USAGE_ERROR)


_TIME_SCALE = click.option(
    "--time-scale",
    default=600.0,
    show_default=True,
    type=click.FloatRange(1, 10_000),
    help="Simulated seconds per real second.",
)
_BROKER_URL = click.option(
    "--broker-url",
    default=None,
    help="Redis or RabbitMQ (amqp://) URL (default: the local Redis, else a private one).",
)
_DATABASE = click.option(
    "--database",
    default="sqlite",
    show_default=True,
    metavar="sqlite|postgresql|URL",
    help="sqlite: a file in the workdir; postgresql: a database created for each run on "
    "TEST_POSTGRES_URL's server (default: postgres@127.0.0.1:5432) and dropped after; "
    "a postgresql URL: on that server instead.",
)


@click.command()
@click.argument("scenario_file", type=click.Path(dir_okay=False))
@_TIME_SCALE
@_BROKER_URL
@click.option(
    "--redis-db",
    default=13,
    show_default=True,
    type=click.IntRange(0, 15),
    help="Redis database of the simulation on a shared server (flushed); not for RabbitMQ.",
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
@_DATABASE
def simulate(
    scenario_file: str,
    time_scale: float,
    broker_url: str | None,
    redis_db: int,
    workdir: str | None,
    timeout_s: float,
    faults: str,
    fault_seed: int,
    database: str,
) -> None:
    """Run a scenario through the real worker, beat and broker; print one JSON report."""
    from pathlib import Path

    require_simulation()
    from simulation.databases import backend_of
    from simulation.faults import parse_faults, refuse_unsupported
    from simulation.harness import Options, SimulationError, run_simulation
    from simulation.processes import refuse_amqp_faults
    from simulation.scenario import ScenarioError, load_scenario

    try:
        scenario = load_scenario(scenario_file)
        check_scenario_dates(scenario)
        fault_names = parse_faults(faults)
        refuse_unsupported(fault_names, backend_of(database))
        refuse_amqp_faults(fault_names, broker_url)
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
        database=database,
    )
    try:
        report, stats = run_simulation(scenario, options, lambda m: click.echo(m, err=True))
    except SimulationError as exc:
        click.echo(f"simulation failed: {exc}", err=True)
        sys.exit(1)
    click.echo(
        f"done in {stats.wall_s:.1f} s; faults {stats.faults.injected or 'none'}; restarts "
        f"{stats.restarts or 'none'}; max lateness {stats.max_lateness_slots} slot(s)"
        + (
            f" (held chains {stats.held_lateness_slots}, others {stats.others_lateness_slots})"
            if stats.faults.held
            else ""
        ),
        err=True,
    )
    click.echo(json.dumps(report, ensure_ascii=False, indent=2))


@click.command(name="fault-matrix")
@click.argument("scenario_file", type=click.Path(dir_okay=False))
@click.option("--seeds", default="1,2", show_default=True, help="Fault seeds, comma-separated.")
@click.option("--faults", default="", help="Faults to run (default: all of them).")
@_TIME_SCALE
@click.option(
    "--output",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the Markdown table here, keeping the file's hand-written part.",
)
@_DATABASE
def fault_matrix(
    scenario_file: str,
    seeds: str,
    faults: str,
    time_scale: float,
    output: str | None,
    database: str,
) -> None:
    """Inject every fault for real and compare with a clean run (docs/reliability.md)."""
    require_simulation()
    from simulation.databases import backend_of
    from simulation.faults import faults_for, parse_faults, refuse_unsupported
    from simulation.matrix import keep_hand_written, render, run_matrix
    from simulation.scenario import ScenarioError, load_scenario

    try:
        scenario = load_scenario(scenario_file)
        check_scenario_dates(scenario)
        backend = backend_of(database)
        names = parse_faults(faults) or faults_for(backend)
        refuse_unsupported(names, backend)
        seed_list = [int(x) for x in seeds.split(",") if x.strip()]
    except (ScenarioError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    target = writable_output(output) if output else None  # before a run of minutes
    rows, clean = run_matrix(scenario, seed_list, names, time_scale, _say, database)
    command = f"retry-pipeline fault-matrix {scenario_file}"
    if target:
        command = "make faults" + (" FAULTS_DB=sqlite" if backend == "sqlite" else "")
    text = render(rows, scenario, seed_list, command, database, clean.max_lateness_slots)
    if target:
        previous = target.read_text("utf-8") if target.exists() else None
        target.write_text(keep_hand_written(text, previous), encoding="utf-8")
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text)
    if any(r.chains_lost or r.outcomes_doubled for r in rows):
        sys.exit(1)


def _say(message: str) -> None:
    click.echo(message, err=True)


# -- the post-holiday scenario and the demo (the main job) ------------------------


@click.group(name="scenario")
def scenario_group() -> None:
    """Generate scenario files for `retry-pipeline simulate`."""


def _post_holiday_json(applications: int, seed: int, day: datetime | None) -> str:
    require_simulation()
    from simulation.linkage import DEFAULT_DAY, post_holiday_scenario

    try:
        data = post_holiday_scenario(applications, seed, day.date() if day else DEFAULT_DAY)
    except (ValueError, OverflowError, CalendarError) as exc:
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
    text = _post_holiday_json(applications, seed, day)  # --date refused before any folder
    target = writable_output(output) if output else None
    if target is None:
        click.echo(text, nl=False)
    else:
        target.write_text(text, encoding="utf-8")
        click.echo(f"scenario written to {output}", err=True)


@click.command()
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

    require_simulation()
    from simulation.demo import demo_table
    from simulation.harness import Options, SimulationError
    from simulation.harness import simulate as run_simulation
    from simulation.scenario import Scenario

    started = time.monotonic()
    text = _post_holiday_json(applications, seed, day)
    scenario = Scenario.model_validate(json.loads(text))
    report_path = writable_output(report_file)
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
