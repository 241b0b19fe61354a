"""The AIRAS → Kei-MOTAS linkage (連携) after a holiday, and a post-holiday scenario.

Certificates are registered upstream in AIRAS (自動車情報管理システム) any day,
holidays included; the linkage copies them into Kei-MOTAS on business days only,
each kind on its own timetable and at most ``cap`` records a run, oldest first.
After a long holiday the backlog takes the morning to drain, so an application
filed during the holiday is pre-reviewed at 08:30 while its certificate still
waits upstream: the case the notice's retry is for. The insurance feed (自賠責)
runs less often than the safety one (保適証), yet at least twice within six
attempts, the notice's reason for six. Pure and seeded (``random.Random(seed)``,
no I/O): the same arguments give the same scenario.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta
from random import Random
from typing import Any

from retry_pipeline.calendar import TZ, BusinessCalendar, format_instant, to_local
from retry_pipeline.config import Settings
from retry_pipeline.model import CertificateKind, Procedure

SAFETY, INSURANCE, COMPLETION = (
    CertificateKind.SAFETY,
    CertificateKind.INSURANCE,
    CertificateKind.COMPLETION,
)
DEFAULT_DAY = date(2026, 5, 7)  # Thu after Golden Week: closed 05-02 to 05-06
BASE_APPLICATIONS = 300  # volumes and caps below are for this many reports; they scale
SAFETY_PER_DAY = 600  # 保適証 registered upstream on a business day (garages, 09:00–18:00)
NEW_PER_DAY = 80  # 完検証 registered upstream on a business day (makers)
HOLIDAY_SHARE = {SAFETY: 0.5, COMPLETION: 0.15}  # of a business day's volume
FILED_SHARE = 0.5  # vehicles whose owner applies through OSS (the rest at the counter)
MORNING_FILED_SHARE = 0.4  # of those inspected on a holiday: filed on the first morning
BATCH_MIN = 30  # applications held over the holiday are pre-reviewed from 08:30 over this long
MORNING_END = time(11, 30)
ORPHAN_SHARE = 0.05  # certificate never registered upstream: auto-corrected even with retries
NEW_SHARE = 0.06  # new inspections among the reports
AFTERNOON_SHARE = 0.02  # detected near the close: parked, one attempt next day at 08:30
COPY_MAX_S = 60  # a run ends at least 4 min before the next grid slot
GROWTH_STEPS = 8  # population x1.5 each, when a short holiday gives too few reports
OFFICES = ("TK-SHINAGAWA", "TK-NERIMA", "TK-ADACHI", "TK-HACHIOJI", "KN-YOKOHAMA", "ST-OMIYA")
MODELS = ("JF3", "MK53S", "LA650S", "HA36S", "B44A", "DA17V", "MA37S", "LA900S")
INSURERS = ("TM01", "SJ02", "MS03", "AD04", "JA05")


@dataclass(frozen=True)
class Feed:
    """One linkage job: copies up to ``cap`` records of one kind a run, oldest first."""

    kind: CertificateKind
    first_run: time  # of each business day, Japan time
    every_min: int
    cap: int
    last_run: time = time(20, 0)

    def runs_on(self, day: date) -> list[datetime]:
        """Start times of this feed's runs on ``day`` (a business day)."""
        start = datetime.combine(day, self.first_run, tzinfo=TZ)
        end = datetime.combine(day, self.last_run, tzinfo=TZ)
        count = int((end - start).total_seconds() // (self.every_min * 60)) + 1
        return [start + timedelta(minutes=self.every_min * i) for i in range(count)]


def copy_s(records: int) -> int:
    """How long a run takes; its batch is committed, so visible, at its end."""
    return min(COPY_MAX_S, 20 + records // 2)


def default_feeds(scale: float = 1.0) -> tuple[Feed, ...]:
    """Timetables and caps; caps scale with the number of applications."""

    def cap(n: int) -> int:
        return max(1, round(n * scale))

    return (
        Feed(SAFETY, time(8, 0), 10, cap(150)),
        Feed(COMPLETION, time(8, 0), 10, cap(8)),
        # Less often, bigger batches: every 25 min, so six attempts (50 min from first
        # to last) always see two of its runs, the notice's reason for six.
        Feed(INSURANCE, time(8, 5), 25, cap(320)),
    )


@dataclass(frozen=True)
class Registration:
    """A certificate as registered upstream in AIRAS, waiting for the linkage."""

    cert_id: str
    kind: CertificateKind
    vehicle: str
    registered_at: datetime
    issued_on: date | None = None  # safety: inspection date; completion: issue date
    insurer_id: str = ""
    insurance_no: str = ""


@dataclass(frozen=True)
class LinkageRun:
    """One run of a feed: what it copied and what it left waiting."""

    kind: CertificateKind
    started_at: datetime
    finished_at: datetime  # the batch is in Kei-MOTAS from here on
    copied: tuple[str, ...]
    backlog: int


def run_linkage(
    registrations: Sequence[Registration], feeds: Sequence[Feed], days: Sequence[date]
) -> tuple[LinkageRun, ...]:
    """Every run of every feed on ``days`` (business days), FIFO and capped."""
    runs: list[LinkageRun] = []
    for feed in feeds:
        queue = sorted(
            (r for r in registrations if r.kind is feed.kind),
            key=lambda r: (r.registered_at, r.cert_id),
        )
        times = [r.registered_at for r in queue]
        head = 0
        for day in days:
            for start in feed.runs_on(day):
                ready = bisect.bisect_right(times, start)
                end = max(head, min(head + feed.cap, ready))
                batch = tuple(r.cert_id for r in queue[head:end])
                head = end
                finished = start + timedelta(seconds=copy_s(len(batch)))
                runs.append(LinkageRun(feed.kind, start, finished, batch, ready - head))
    return tuple(sorted(runs, key=lambda r: (r.started_at, r.kind.value)))


def arrivals(runs: Sequence[LinkageRun]) -> dict[str, datetime]:
    """When each copied certificate reached Kei-MOTAS (``available_at``)."""
    return {cert: run.finished_at for run in runs for cert in run.copied}


@dataclass(frozen=True)
class Filing:
    """An OSS application (ＯＳＳ申請) and the certificates it needs."""

    procedure: Procedure
    vehicle: str
    office: str
    filed_at: datetime
    main: Registration | None  # safety (continuous) or completion (new); None: never registered
    insurance: Registration | None


@dataclass(frozen=True)
class Morning:
    """A generated post-holiday day: upstream registrations, linkage runs, the scenario."""

    day: date
    feeds: tuple[Feed, ...]
    registrations: tuple[Registration, ...]
    runs: tuple[LinkageRun, ...]
    scenario: dict[str, Any]


def post_holiday_scenario(applications: int, seed: int, day: date = DEFAULT_DAY) -> dict[str, Any]:
    """A scenario in the ``simulate`` format (see ``post_holiday_morning``)."""
    return post_holiday_morning(applications, seed, day).scenario


def post_holiday_morning(applications: int, seed: int, day: date = DEFAULT_DAY) -> Morning:
    """``applications`` reports on the first business day after a holiday, from ``seed``."""
    if applications < 1:
        raise ValueError("at least one application")
    calendar = BusinessCalendar(Settings())
    prev, nxt = _neighbours(calendar, day)
    for step in range(GROWTH_STEPS):  # too few reports for a short holiday: a bigger population
        morning = _generate(applications, seed, day, prev, nxt, calendar, 1.5**step)
        if morning is not None:
            return morning
    raise ValueError(f"the holiday before {day} leaves too few late certificates")


def _neighbours(calendar: BusinessCalendar, day: date) -> tuple[date, date]:
    if not calendar.is_business_day(day):
        raise ValueError(f"{day} is not a business day ({calendar.closure_reason(day)})")
    prev = day - timedelta(days=1)
    if calendar.is_business_day(prev):
        raise ValueError(f"{day} does not follow a holiday: {prev} is a business day")
    while not calendar.is_business_day(prev):
        prev -= timedelta(days=1)
    return prev, calendar.next_opening(day).date()


class _World:
    """Random vehicles, certificates and filings around one post-holiday day."""

    def __init__(self, rng: Random, day: date) -> None:
        self.rng = rng
        self.day = day
        self.registrations: list[Registration] = []
        self._chassis: set[str] = set()

    def at(self, day: date, hh: int, mm: int = 0, s: int = 0) -> datetime:
        return datetime.combine(day, time(hh, mm), tzinfo=TZ) + timedelta(seconds=s)

    def chassis(self) -> str:
        while True:
            v = f"{self.rng.choice(MODELS)}-{self.rng.randrange(100_000, 10_000_000)}"
            if v not in self._chassis:
                self._chassis.add(v)
                return v

    def register(
        self, kind: CertificateKind, vehicle: str, at: datetime, **kw: Any
    ) -> Registration:
        reg = Registration(
            f"{kind.value[0].upper()}{len(self.registrations):06d}", kind, vehicle, at, **kw
        )
        self.registrations.append(reg)
        return reg

    def insurance(self, vehicle: str, at: datetime) -> Registration:
        no = f"{self.rng.randrange(10**9):09d}"
        return self.register(
            INSURANCE, vehicle, at, insurer_id=self.rng.choice(INSURERS), insurance_no=no
        )

    def vehicle(
        self, procedure: Procedure, at: datetime, *, holiday: bool = False, filed: bool = True
    ) -> Filing | None:
        """A vehicle inspected (or completed) at ``at`` and maybe filed through OSS."""
        v, rng = self.chassis(), self.rng
        if procedure is Procedure.CONTINUOUS:
            # The garage sells the insurance and registers it first: a safety
            # certificate cannot be registered without it (the notice, item 2).
            ins = self.insurance(v, at - timedelta(seconds=rng.randrange(120, 2400)))
            inspected = to_local(at).date() - timedelta(days=int(rng.random() < 0.1))
            key = {"insurer_id": ins.insurer_id, "insurance_no": ins.insurance_no}
            main = self.register(SAFETY, v, at, issued_on=inspected, **key)
        else:
            issued = to_local(at).date() - timedelta(days=rng.randrange(3))
            main = self.register(COMPLETION, v, at, issued_on=issued)
            ins = self.insurance(v, at + timedelta(seconds=rng.randrange(600, 86_400)))
        if not filed:
            return None
        last, draw = max(main.registered_at, ins.registered_at), rng.random()
        if holiday and draw < MORNING_FILED_SHARE:  # the office staff files on the first morning
            filed_at = self.at(self.day, 8, 30, int(rng.triangular(0, 3 * 3600, 1800)))
            filed_at = max(filed_at, last + timedelta(minutes=20))
        elif draw < 0.9:
            filed_at = last + timedelta(seconds=rng.randrange(1200, 14_400))
        else:
            filed_at = last + timedelta(seconds=rng.randrange(14_400, 172_800))
        return Filing(procedure, v, rng.choice(OFFICES), filed_at, main, ins)


def _generate(
    n: int, seed: int, day: date, prev: date, nxt: date, calendar: BusinessCalendar, growth: float
) -> Morning | None:
    rng = Random(seed)
    world = _World(rng, day)
    scale = n / BASE_APPLICATIONS
    filings: list[Filing] = []
    d = prev
    while d <= day:
        for kind, per_day, proc in (
            (SAFETY, SAFETY_PER_DAY, Procedure.CONTINUOUS),
            (COMPLETION, NEW_PER_DAY, Procedure.NEW),
        ):
            holiday = not calendar.is_business_day(d)
            share = HOLIDAY_SHARE[kind] if holiday else 1.0
            for _ in range(round(per_day * share * scale * growth)):
                at = world.at(d, 9, s=rng.randrange(9 * 3600))
                f = world.vehicle(proc, at, holiday=holiday, filed=rng.random() < FILED_SHARE)
                if f is not None:
                    filings.append(f)
        d += timedelta(days=1)
    n_pm, n_orphan = round(n * AFTERNOON_SHARE), round(n * ORPHAN_SHARE)
    n_new = round(n * NEW_SHARE)
    afternoon = [_afternoon(world, i, n_pm) for i in range(n_pm)]
    feeds = default_feeds(scale * growth)
    runs = run_linkage(world.registrations, feeds, [prev, day, nxt])
    arrived = arrivals(runs)
    opening = calendar.opening_at(day)
    since = calendar.close_at(prev)
    candidates = [r for r in _review(world, filings, since, opening, arrived) if r.missing]
    pool = {p: [c for c in candidates if c.filing.procedure is p] for p in Procedure}
    n_new = min(n_new, len(pool[Procedure.NEW]))
    n_cont = n - n_pm - n_orphan - n_new
    if len(pool[Procedure.CONTINUOUS]) < n_cont:
        return None
    chosen = rng.sample(pool[Procedure.CONTINUOUS], n_cont) + rng.sample(pool[Procedure.NEW], n_new)
    chosen += [_orphan(world, opening) for _ in range(n_orphan)]
    chosen += afternoon
    horizon = calendar.opening_at(nxt)
    scenario = _scenario(chosen, arrived, horizon, day)
    return Morning(day, feeds, tuple(world.registrations), runs, scenario)


@dataclass(frozen=True)
class Finding:
    """What the pre-review found for one filing at ``at``."""

    filing: Filing
    at: datetime
    missing: tuple[CertificateKind, ...]
    confirmed: tuple[CertificateKind, ...] = ()


def _review(
    world: _World,
    filings: list[Filing],
    since: datetime,
    opening: datetime,
    arrived: dict[str, datetime],
) -> list[Finding]:
    """Pre-review (前審査) times and findings of the applications reviewed this morning.

    Filed since the last close before the holiday: held, reviewed in filing order
    from the opening. Filed this morning: reviewed within minutes.
    """
    rng, end = world.rng, datetime.combine(world.day, MORNING_END, tzinfo=TZ)
    held = sorted(
        (f for f in filings if since <= f.filed_at < opening), key=lambda f: (f.filed_at, f.vehicle)
    )
    out: list[Finding] = []
    for i, f in enumerate(held):
        offset_s = i * BATCH_MIN * 60 // max(1, len(held))
        out.append(_check(f, _stamp(rng, opening + timedelta(seconds=offset_s)), arrived))
    for f in filings:
        if opening <= f.filed_at < end:
            out.append(
                _check(
                    f, _stamp(rng, f.filed_at + timedelta(seconds=rng.randrange(60, 360))), arrived
                )
            )
    return out


def _stamp(rng: Random, at: datetime) -> datetime:
    """Whole minutes mostly; a quarter keep their seconds."""
    return at if rng.random() < 0.25 else at.replace(second=0, microsecond=0)


def _check(f: Filing, at: datetime, arrived: dict[str, datetime]) -> Finding:
    def here(reg: Registration | None) -> bool:
        return reg is not None and reg.cert_id in arrived and arrived[reg.cert_id] <= at

    if f.procedure is Procedure.CONTINUOUS:
        if not here(f.main):  # the insurance key is on the missing safety certificate
            return Finding(f, at, (SAFETY,))
        return Finding(f, at, () if here(f.insurance) else (INSURANCE,), (SAFETY,))
    kinds = [(COMPLETION, here(f.main)), (INSURANCE, here(f.insurance))]
    return Finding(f, at, tuple(k for k, ok in kinds if not ok), tuple(k for k, ok in kinds if ok))


def _afternoon(world: _World, i: int, count: int) -> Finding:
    """Filed before the garage registered the certificate: after the close, or never."""
    rng, day = world.rng, world.day
    # R12: the last one comes at 15:55, with no slot left before the 16:00 close.
    last = i == count - 1 and count > 1
    at = world.at(day, 15, 55) if last else world.at(day, 15, 20 + rng.randrange(30))
    filed = at - timedelta(seconds=rng.randrange(60, 600))
    if i == 1 and count > 2:  # never registered: auto-corrected at the next day's 08:30
        return Finding(_unregistered(world, filed), at, (SAFETY,))
    filing = world.vehicle(Procedure.CONTINUOUS, world.at(day, 16, 5, rng.randrange(3300)))
    assert filing is not None
    return Finding(replace(filing, filed_at=filed), at, (SAFETY,))


def _unregistered(world: _World, filed: datetime) -> Filing:
    return Filing(
        Procedure.CONTINUOUS, world.chassis(), world.rng.choice(OFFICES), filed, None, None
    )


def _orphan(world: _World, opening: datetime) -> Finding:
    """A safety certificate never registered upstream (wrong chassis number, forgotten)."""
    rng = world.rng
    at = _stamp(rng, opening + timedelta(seconds=rng.randrange(3 * 3600)))
    return Finding(
        _unregistered(world, at - timedelta(seconds=rng.randrange(60, 86_400))), at, (SAFETY,)
    )


def _scenario(
    chosen: list[Finding], arrived: dict[str, datetime], horizon: datetime, day: date
) -> dict[str, Any]:
    """The ``simulate`` scenario: certificates copied by ``horizon``, one report each."""
    ordered = sorted(chosen, key=lambda r: (r.filing.filed_at, r.filing.vehicle))
    certificates: list[dict[str, Any]] = []
    reports: list[dict[str, Any]] = []
    for number, finding in enumerate(ordered, start=1):
        f, at, missing, confirmed = finding.filing, finding.at, finding.missing, finding.confirmed
        report: dict[str, Any] = {
            "application": f"OSS-{to_local(f.filed_at):%y%m%d}-{number:05d}",
            "office": f.office,
            "procedure": f.procedure.value,
            "vehicle": f.vehicle,
            "missing": [k.value for k in missing],
            "confirmed": [k.value for k in confirmed],
            "detected_at": format_instant(at),
        }
        if f.procedure is Procedure.NEW and f.insurance is not None:
            report["insurer_id"] = f.insurance.insurer_id
            report["insurance_no"] = f.insurance.insurance_no
        reports.append(report)
        for reg in (f.main, f.insurance):
            if reg is not None and reg.cert_id in arrived and arrived[reg.cert_id] <= horizon:
                certificates.append(_certificate(reg, arrived[reg.cert_id]))
    certificates.sort(key=lambda c: (c["available_at"], c["id"]))
    reports.sort(key=lambda r: (r["detected_at"], r["application"]))
    return {
        "config": {"new_inspection_retry_from": day.replace(day=1).isoformat()},
        "certificates": certificates,
        "reports": reports,
    }


def _certificate(reg: Registration, available_at: datetime) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "id": reg.cert_id,
        "kind": reg.kind.value,
        "vehicle": reg.vehicle,
        "available_at": format_instant(available_at),
    }
    if reg.kind is SAFETY:
        spec["inspected_on"] = str(reg.issued_on)
    if reg.kind is COMPLETION:
        spec["issued_on"] = str(reg.issued_on)
    if reg.kind is not COMPLETION:
        spec["insurer_id"], spec["insurance_no"] = reg.insurer_id, reg.insurance_no
    return spec
