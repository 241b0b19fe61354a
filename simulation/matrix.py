"""The fault matrix (`make faults`): each fault injected for real, compared with a clean run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from simulation.databases import backend_of
from simulation.faults import FAULTS, POSTGRESQL_ONLY, faults_for
from simulation.harness import Options, RunStats, run_simulation
from simulation.scenario import Scenario


@dataclass(frozen=True)
class Row:
    """One line of docs/reliability.md."""

    fault: str
    runs: int
    injected: int
    live_at_injection: int
    chains_lost: int
    outcomes_doubled: int
    max_lateness_slots: int
    identical_reports: int
    restarts: int
    held: int = 0  # chains whose row lock an outside session held (hold-row-lock)
    held_lateness_slots: int = 0
    others_lateness_slots: int = 0


# docs/reliability.md: what follows this line is written by hand; regenerating keeps it
HAND_WRITTEN = "<!-- hand-written below: `make faults` keeps everything from here on -->"


def compare(baseline: dict[str, Any], report: dict[str, Any]) -> tuple[int, bool]:
    """Applications whose outcome is missing or different, and whether reports are equal."""
    base = {a["application"]: a for a in baseline["applications"]}
    got = {a["application"]: a for a in report["applications"]}
    lost = sum(1 for app, entry in base.items() if got.get(app) != entry)
    return lost, baseline == report


def doubled(baseline_stats: RunStats, stats: RunStats) -> int:
    """Outcomes received beyond those of the clean run, plus any chain ended twice."""
    extra = sum(
        max(0, n - baseline_stats.outcomes_per_application.get(app, 0))
        for app, n in stats.outcomes_per_application.items()
    )
    return extra + max(0, stats.endings_per_chain - 1)


def run_matrix(
    scenario: Scenario,
    seeds: Sequence[int],
    faults: Sequence[str] | None = None,
    time_scale: float = 600.0,
    progress: Callable[[str], None] | None = None,
    database: str = "sqlite",
) -> tuple[list[Row], RunStats]:
    """A clean run, then every fault alone and all together, for each seed.

    Every run has a private database of its own (``database``: see Options); the
    default faults are those the database can have (``hold-row-lock``: PostgreSQL).
    """
    say = progress or (lambda _m: None)
    faults = tuple(faults) if faults is not None else faults_for(backend_of(database))
    clean = Options(time_scale=time_scale, database=database)
    baseline, base_stats = run_simulation(scenario, clean)
    say(f"clean run: {len(baseline['applications'])} applications in {base_stats.wall_s:.0f} s")
    rows = []
    for fault_set in [(f,) for f in faults] + [tuple(faults)]:
        name = fault_set[0] if len(fault_set) == 1 else "all at once"
        acc = dict(injected=0, live=0, lost=0, doubled=0, late=0, identical=0, restarts=0)
        acc.update(held=0, held_late=0, others_late=0)
        for seed in seeds:
            options = Options(
                time_scale=time_scale, faults=fault_set, fault_seed=seed, database=database
            )
            report, stats = run_simulation(scenario, options)
            lost, identical = compare(baseline, report)
            acc["injected"] += sum(stats.faults.injected.values())
            acc["live"] += sum(stats.faults.live_at_injection.values())
            acc["lost"] += lost
            acc["doubled"] += doubled(base_stats, stats)
            acc["late"] = max(acc["late"], stats.max_lateness_slots)
            acc["identical"] += int(identical)
            acc["restarts"] += sum(stats.restarts.values())
            acc["held"] += len(stats.faults.held)
            acc["held_late"] = max(acc["held_late"], stats.held_lateness_slots)
            acc["others_late"] = max(acc["others_late"], stats.others_lateness_slots)
            held = (
                f" (held {len(stats.faults.held)}: {stats.held_lateness_slots}, others "
                f"{stats.others_lateness_slots})"
                if stats.faults.held
                else ""
            )
            say(
                f"{name} seed {seed}: lost {lost}, identical {identical}, "
                f"late {stats.max_lateness_slots}{held}, {stats.wall_s:.0f} s"
            )
        rows.append(
            Row(
                name,
                len(seeds),
                acc["injected"],
                acc["live"],
                acc["lost"],
                acc["doubled"],
                acc["late"],
                acc["identical"],
                acc["restarts"],
                acc["held"],
                acc["held_late"],
                acc["others_late"],
            )
        )
    return rows, base_stats


def render(
    rows: Sequence[Row],
    scenario: Scenario,
    seeds: Sequence[int],
    command: str,
    database: str = "sqlite",
    clean_lateness_slots: int | None = None,
) -> str:
    """docs/reliability.md (the generated part; see ``keep_hand_written``)."""
    backend = backend_of(database)
    where = (
        "a PostgreSQL database created for each run and dropped after"
        if backend == "postgresql"
        else "a SQLite file for each run"
    )
    clean = (
        f" The clean run's largest lateness was {clean_lateness_slots} slot(s)."
        if clean_lateness_slots is not None
        else ""
    )
    lines = [
        "# Reliability: the fault matrix",
        "",
        f"Made by `{command}` (seeds {', '.join(map(str, seeds))}): "
        f"{len({r['application'] for r in scenario.reports})} applications of a generated "
        "post-holiday morning, each run through the real worker, beat and Redis on the scaled "
        f"clock with {where}, first without faults, then with each fault injected for real at "
        "moments chosen from the seed (a killed process is restarted as a supervisor would)."
        + clean,
        "",
        "| fault | runs | injected | chains live at injection | chains lost | "
        "outcomes doubled | max lateness (slots) | report identical | process restarts |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        late = str(r.max_lateness_slots)
        if r.held:
            late += f" (held chains {r.held_lateness_slots}, others {r.others_lateness_slots})"
        lines.append(
            f"| {r.fault} | {r.runs} | {r.injected} | {r.live_at_injection} | {r.chains_lost} | "
            f"{r.outcomes_doubled} | {late} | {r.identical_reports}/{r.runs} | {r.restarts} |"
        )
    lines += [
        "",
        "- *chains lost*: applications whose outcome, attempts or decision time differ from "
        "the clean run (a lost chain never gets its outcome).",
        "- *outcomes doubled*: outcomes received beyond the clean run's, plus chains ended "
        "twice; redeliveries of the same outcome (same idempotency key) are not doubles.",
        "- *max lateness*: the largest delay of an attempt behind its slot, in whole slots, "
        "measured from the slot itself (not from the moment the system was whole again). "
        "Faults that take the beat down for more than two slots, or take away a countdown "
        "message, delay an attempt until the first grid tick after recovery (after the "
        "close, the next business day's 08:30), which sends every attempt that is due and "
        "not in flight, or a whole slot overdue; a slot whose rows were locked or whose "
        "registry read failed keeps trying by itself instead.",
        "- *process restarts*: processes that exited by themselves and were restarted by the "
        "harness acting as supervisor (the worker exits when Redis restarts under it); "
        "killed processes are restarted by the fault itself and not counted here.",
        "- *held chains*, *others* (rows with `hold-row-lock`): the largest lateness of the "
        "chains whose row an outside session held locked (`SELECT ... FOR UPDATE`, then idle "
        "in its transaction for two slots), and of the other chains' attempts at the slots "
        "that fell while a lock was held. The slot's batch, the tick and the close skip a "
        "locked row (`SKIP LOCKED`): the slot's message tries again with a back-off (until "
        "the next grid tick, or after the close until the next opening) and decides a held "
        "chain once the lock goes, at its own slot (its outcome, attempts and decision time "
        "do not move), just late.",
        "- Faults: "
        + "; ".join(f"`{f}`" for f in FAULTS)
        + " (see `simulation/faults.py`)"
        + (
            f"; {', '.join(f'`{f}`' for f in POSTGRESQL_ONLY)} needs PostgreSQL and was not "
            "run here (`make faults` without `FAULTS_DB=sqlite`)."
            if backend != "postgresql"
            else "."
        ),
    ]
    return "\n".join(lines) + "\n"


def keep_hand_written(generated: str, previous: str | None) -> str:
    """The generated part, then the previous file's hand-written part (from HAND_WRITTEN)."""
    if previous is None or HAND_WRITTEN not in previous:
        return generated
    return generated + "\n" + previous[previous.index(HAND_WRITTEN) :]
