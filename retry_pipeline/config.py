"""Settings, read from ``RETRY_PIPELINE_*`` environment variables in this one module (DESIGN 9)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, time

from retry_pipeline import names
from retry_pipeline.errors import ConfigError

PREFIX = "RETRY_PIPELINE_"
TIMEZONE = "Asia/Tokyo"  # every rule is read in Japan time (no daylight saving)


@dataclass(frozen=True)
class Settings:
    """Every tunable of the rules, with SPEC.md's defaults ("Calendar and defaults")."""

    opening: time = time(8, 30)  # 開局
    close: time = time(16, 0)  # OSS close, D: the notice gives no time
    step_min: int = 10
    attempts_per_chain: int = 6
    next_day_attempts: int = 1
    extra_closures: frozenset[date] = field(default_factory=frozenset)
    new_inspection_retry_from: date | None = None  # R1: unset = new inspection not retried
    safety_validity_days: int = 15  # R2: inspection date is day 1
    completion_validity_months: int = 9  # R2
    database_url: str = "sqlite:///retry_pipeline.sqlite3"
    broker_url: str = names.DEFAULT_BROKER_URL
    queue: str = names.DEFAULT_QUEUE  # where reports and attempts are consumed
    examination_queue: str = names.DEFAULT_EXAMINATION_QUEUE  # where outcomes go (DESIGN 5)
    resume_task: str = names.DEFAULT_RESUME_TASK
    auto_correct_task: str = names.DEFAULT_AUTO_CORRECT_TASK
    report_received_task: str = names.DEFAULT_REPORT_RECEIVED_TASK  # receipts (DESIGN 11)
    clock_file: str | None = None  # scaled clock shared by processes (simulate); unset = real
    beat_max_interval_s: float = 5.0
    # Countdowns never exceed one slot (10 min); redelivery after an hour is far beyond that.
    visibility_timeout_s: int = 3600

    def __post_init__(self) -> None:
        if self.step_min <= 0 or 24 * 60 % self.step_min:
            raise ConfigError(f"STEP_MIN must divide a day into whole slots, got {self.step_min}")
        if self.attempts_per_chain < 1:
            raise ConfigError(f"ATTEMPTS_PER_CHAIN must be >= 1, got {self.attempts_per_chain}")
        if self.next_day_attempts < 1:
            raise ConfigError(f"NEXT_DAY_ATTEMPTS must be >= 1, got {self.next_day_attempts}")
        if self.close <= self.opening:
            raise ConfigError(f"CLOSE {self.close} must be after OPENING {self.opening}")
        if self.safety_validity_days < 1 or self.completion_validity_months < 1:
            raise ConfigError("validity periods must be at least one day / one month")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``RETRY_PIPELINE_*`` variables; unknown ones are refused."""
        env = os.environ if environ is None else environ
        ours = {k[len(PREFIX) :]: v for k, v in env.items() if k.startswith(PREFIX)}
        extra = sorted(set(ours) - _KNOWN)
        if extra:
            raise ConfigError(f"unknown setting(s): {', '.join(PREFIX + k for k in extra)}")
        kw: dict[str, object] = {}
        if "OPENING" in ours:
            kw["opening"] = _parse_time("OPENING", ours["OPENING"])
        if "CLOSE" in ours:
            kw["close"] = _parse_time("CLOSE", ours["CLOSE"])
        for name in _INTS:
            if name in ours:
                kw[name.lower()] = _parse_int(name, ours[name])
        if ours.get("EXTRA_CLOSURES", "").strip():
            kw["extra_closures"] = frozenset(
                _parse_date("EXTRA_CLOSURES", part)
                for part in ours["EXTRA_CLOSURES"].split(",")
                if part.strip()
            )
        if ours.get("NEW_INSPECTION_RETRY_FROM", "").strip():
            kw["new_inspection_retry_from"] = _parse_date(
                "NEW_INSPECTION_RETRY_FROM", ours["NEW_INSPECTION_RETRY_FROM"]
            )
        for name in _TEXT:
            if ours.get(name, "").strip():
                kw[name.lower()] = ours[name].strip()
        if ours.get("BEAT_MAX_INTERVAL_S", "").strip():
            try:
                kw["beat_max_interval_s"] = float(ours["BEAT_MAX_INTERVAL_S"])
            except ValueError:
                raise ConfigError(f"{PREFIX}BEAT_MAX_INTERVAL_S must be a number") from None
        return cls(**kw)  # type: ignore[arg-type]


_INTS = (
    "STEP_MIN",
    "ATTEMPTS_PER_CHAIN",
    "NEXT_DAY_ATTEMPTS",
    "SAFETY_VALIDITY_DAYS",
    "COMPLETION_VALIDITY_MONTHS",
    "VISIBILITY_TIMEOUT_S",
)
_TEXT = (
    "DATABASE_URL",
    "BROKER_URL",
    "QUEUE",
    "EXAMINATION_QUEUE",
    "RESUME_TASK",
    "AUTO_CORRECT_TASK",
    "REPORT_RECEIVED_TASK",
    "CLOCK_FILE",
)
_OTHER = (
    "OPENING",
    "CLOSE",
    "EXTRA_CLOSURES",
    "NEW_INSPECTION_RETRY_FROM",
    "BEAT_MAX_INTERVAL_S",
)
_KNOWN = frozenset({*_INTS, *_TEXT, *_OTHER})


def _parse_time(name: str, raw: str) -> time:
    try:
        parsed = time.fromisoformat(raw.strip())
    except ValueError:
        raise ConfigError(f"{PREFIX}{name} must be HH:MM, got {raw!r}") from None
    if parsed.tzinfo is not None:
        raise ConfigError(f"{PREFIX}{name} is a Japan-time HH:MM without offset, got {raw!r}")
    return parsed


def _parse_int(name: str, raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise ConfigError(f"{PREFIX}{name} must be an integer, got {raw!r}") from None


def _parse_date(name: str, raw: str) -> date:
    try:
        return date.fromisoformat(raw.strip())
    except ValueError:
        raise ConfigError(f"{PREFIX}{name} must hold YYYY-MM-DD dates, got {raw!r}") from None
