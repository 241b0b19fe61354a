"""Settings, read from ``RETRY_PIPELINE_*`` environment variables in this one module (DESIGN 9)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, time

from retry_pipeline import names
from retry_pipeline.errors import ConfigError

PREFIX = "RETRY_PIPELINE_"
TIMEZONE = "Asia/Tokyo"  # every rule is read in Japan time (no daylight saving)
TASK_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,199}")  # a Celery task name, plainly


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
    registry_url: str | None = None  # Kei-MOTAS, read only (docs/registry.md); unset = database
    queue: str = names.DEFAULT_QUEUE  # where reports and attempts are consumed
    examination_queue: str = names.DEFAULT_EXAMINATION_QUEUE  # where outcomes go (DESIGN 5)
    resume_task: str = names.DEFAULT_RESUME_TASK
    auto_correct_task: str = names.DEFAULT_AUTO_CORRECT_TASK
    report_received_task: str = names.DEFAULT_REPORT_RECEIVED_TASK  # receipts (DESIGN 11)
    clock_file: str | None = None  # scaled clock shared by processes (simulate); unset = real
    beat_max_interval_s: float = 5.0
    # Countdowns never exceed one slot (10 min); redelivery after an hour is far beyond that.
    visibility_timeout_s: int = 3600
    heartbeat_s: float = 30.0  # how often beat and each worker record their heartbeat
    # R4a: a report that reaches the pipeline longer than this after its detection is stale.
    stale_after_s: int = 86_400
    # Message signing (docs/security.md): PEM files; all three set = signing on.
    security_key: str | None = None
    security_certificate: str | None = None
    security_cert_store: str | None = None

    @property
    def registry_database_url(self) -> str:
        """The database the certificate registry reads (defaults to the pipeline's own)."""
        return self.registry_url or self.database_url

    @property
    def signing(self) -> bool:
        """Whether messages are signed and only signed messages are taken."""
        return bool(self.security_key and self.security_certificate and self.security_cert_store)

    # Issue 12: a message over this many bytes (or compressed) is refused before decoding.
    max_body_bytes: int = 1_048_576
    dead_letter_retention_days: int = 90  # the daily purge keeps this many days
    # PostgreSQL session timeouts set by the engine (0 = off); a stuck row costs a retry.
    db_lock_timeout_ms: int = 5_000
    db_statement_timeout_ms: int = 120_000
    db_idle_in_transaction_timeout_ms: int = 60_000
    # The relay: an unconfirmed outcome goes again after a back-off doubling from
    # RELAY_BACKOFF_MIN up to RELAY_BACKOFF_MAX_MIN, at most RELAY_MAX_SENDS times in all.
    relay_backoff_min: int = 20
    relay_backoff_max_min: int = 240
    relay_max_sends: int = 8
    # Issue 11: one-report messages are taken in micro-batches of up to REPORT_BATCH,
    # flushed at least every REPORT_FLUSH_MS (retry_pipeline/report_buffer.py); 1 = off.
    report_batch: int = 100
    report_flush_ms: int = 50

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
        security = (self.security_key, self.security_certificate, self.security_cert_store)
        if any(security) and not all(security):
            raise ConfigError(
                "SECURITY_KEY, SECURITY_CERTIFICATE and SECURITY_CERT_STORE go together"
            )
        if self.heartbeat_s <= 0:
            raise ConfigError(f"HEARTBEAT_S must be > 0, got {self.heartbeat_s}")
        if self.stale_after_s <= 0:
            raise ConfigError(f"STALE_AFTER_S must be > 0 seconds, got {self.stale_after_s}")
        if self.max_body_bytes < 1024:
            raise ConfigError(f"MAX_BODY_BYTES must be >= 1024, got {self.max_body_bytes}")
        if self.dead_letter_retention_days < 1:
            raise ConfigError("DEAD_LETTER_RETENTION_DAYS must be >= 1")
        if min(self.db_lock_timeout_ms, self.db_statement_timeout_ms,
               self.db_idle_in_transaction_timeout_ms) < 0:  # fmt: skip
            raise ConfigError("DB_*_TIMEOUT_MS must be >= 0 (0: no timeout)")
        if self.relay_backoff_min < 1 or self.relay_backoff_max_min < self.relay_backoff_min:
            raise ConfigError("RELAY_BACKOFF_MIN must be >= 1 and <= RELAY_BACKOFF_MAX_MIN")
        if self.relay_max_sends < 2:  # the booked first send counts as one
            raise ConfigError(f"RELAY_MAX_SENDS must be >= 2, got {self.relay_max_sends}")
        if not 1 <= self.report_batch <= 1000:
            raise ConfigError(f"REPORT_BATCH must be 1..1000, got {self.report_batch}")
        if not 1 <= self.report_flush_ms <= 1000:
            raise ConfigError(f"REPORT_FLUSH_MS must be 1..1000, got {self.report_flush_ms}")
        for key, task in (("RESUME_TASK", self.resume_task),
                          ("AUTO_CORRECT_TASK", self.auto_correct_task),
                          ("REPORT_RECEIVED_TASK", self.report_received_task)):  # fmt: skip
            if not TASK_NAME.fullmatch(task):
                raise ConfigError(
                    f"{key} must be a task name (ASCII letters, digits and . _ : -), got {task!r}"
                )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``RETRY_PIPELINE_*`` variables; unknown ones are refused."""
        env = os.environ if environ is None else environ
        ours = {k[len(PREFIX) :]: v for k, v in env.items() if k.startswith(PREFIX)}
        for name in SECRETS:
            if f"{name}_FILE" in ours:
                ours[name] = read_secret_file(name, ours)
                del ours[f"{name}_FILE"]
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
        for name in ("BEAT_MAX_INTERVAL_S", "HEARTBEAT_S"):
            if ours.get(name, "").strip():
                try:
                    kw[name.lower()] = float(ours[name])
                except ValueError:
                    raise ConfigError(f"{PREFIX}{name} must be a number") from None
        return cls(**kw)  # type: ignore[arg-type]


# Settings that may carry a password: each also reads from a file named by ``<NAME>_FILE``
# (compose secrets, /run/secrets/...), so it never sits on a command line or in ``ps``.
SECRETS = ("DATABASE_URL", "BROKER_URL", "REGISTRY_URL")


def read_secret_file(name: str, ours: Mapping[str, str]) -> str:
    """The value of ``RETRY_PIPELINE_<name>`` from the file ``RETRY_PIPELINE_<name>_FILE``."""
    if ours.get(name, "").strip():
        raise ConfigError(f"set {PREFIX}{name} or {PREFIX}{name}_FILE, not both")
    path = ours[f"{name}_FILE"].strip()
    try:
        with open(path, encoding="utf-8") as f:
            value = f.read().strip()
    except OSError as exc:
        raise ConfigError(
            f"{PREFIX}{name}_FILE: cannot read {path!r} ({exc.strerror or exc})"
        ) from None
    if not value:
        raise ConfigError(f"{PREFIX}{name}_FILE: {path!r} is empty")
    return value


def env_setting(name: str, default: str, environ: Mapping[str, str] | None = None) -> str:
    """One ``RETRY_PIPELINE_<name>`` value, from the variable or its ``_FILE`` (celeryconfig)."""
    env = os.environ if environ is None else environ
    ours = {k[len(PREFIX) :]: v for k, v in env.items() if k.startswith(PREFIX)}
    if name in SECRETS and f"{name}_FILE" in ours:
        return read_secret_file(name, ours)
    return ours.get(name, "").strip() or default


_INTS = (
    "STEP_MIN",
    "ATTEMPTS_PER_CHAIN",
    "NEXT_DAY_ATTEMPTS",
    "SAFETY_VALIDITY_DAYS",
    "COMPLETION_VALIDITY_MONTHS",
    "VISIBILITY_TIMEOUT_S",
    "STALE_AFTER_S",
    "MAX_BODY_BYTES",
    "DEAD_LETTER_RETENTION_DAYS",
    "DB_LOCK_TIMEOUT_MS",
    "DB_STATEMENT_TIMEOUT_MS",
    "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS",
    "RELAY_BACKOFF_MIN",
    "RELAY_BACKOFF_MAX_MIN",
    "RELAY_MAX_SENDS",
    "REPORT_BATCH",
    "REPORT_FLUSH_MS",
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
    "REGISTRY_URL",
    "SECURITY_KEY",
    "SECURITY_CERTIFICATE",
    "SECURITY_CERT_STORE",
)
_OTHER = (
    "OPENING",
    "CLOSE",
    "EXTRA_CLOSURES",
    "NEW_INSPECTION_RETRY_FROM",
    "BEAT_MAX_INTERVAL_S",
    "LOG_FORMAT",  # read by logs.py (json: one JSON object per line)
    "WEB_SECRET",  # read by web/console.py (signs the console's session cookie)
    "WEB_SECRET_FILE",  # the same from a file (compose secrets)
    "WEB_COOKIE_SECURE",  # read by web/console.py (1: the session cookie is Secure, behind TLS)
    "HEARTBEAT_S",
    "FLOWER_BASIC_AUTH_FILE",  # read by flowerconfig.py
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
