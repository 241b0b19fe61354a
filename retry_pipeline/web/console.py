"""What every request of the console shares: settings, databases, clock, service, cookies."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from retry_pipeline.adapters.db import make_engine, make_sessions
from retry_pipeline.clock import Clock, clock_from
from retry_pipeline.config import PREFIX, Settings
from retry_pipeline.errors import ConfigError
from retry_pipeline.service.pipeline import Pipeline

SECRET_ENV = PREFIX + "WEB_SECRET"
SECURE_ENV = PREFIX + "WEB_COOKIE_SECURE"
MIN_SECRET = 32
SESSION_COOKIE = "rp_session"
LOGIN_COOKIE = "rp_login"
SESSION_MAX_AGE_S = 12 * 3600  # a working day; then log in again
LOGIN_MAX_AGE_S = 3600


def secret_from_env(environ: dict[str, str] | None = None) -> str:
    """``RETRY_PIPELINE_WEB_SECRET``, refused when missing or shorter than 32 characters."""
    env = os.environ if environ is None else environ
    secret = env.get(SECRET_ENV, "")
    path = env.get(f"{SECRET_ENV}_FILE", "").strip()
    if not secret.strip() and path:  # compose secrets: the value sits in a file
        try:
            secret = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{SECRET_ENV}_FILE {path}: {exc.strerror}") from None
    if len(secret.strip()) < MIN_SECRET:
        raise ConfigError(
            f"{SECRET_ENV} must be set to at least {MIN_SECRET} characters "
            "(it signs the console's session cookie)"
        )
    return secret


def cookie_secure_from_env(environ: dict[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return env.get(SECURE_ENV, "").strip().lower() in ("1", "true", "yes")


def _default_service(settings: Settings) -> Callable[[], Pipeline]:
    def build() -> Pipeline:
        from retry_pipeline.bootstrap import bootstrap
        from retry_pipeline.tasks import app

        return bootstrap(settings, app)

    return build


@dataclass
class Console:
    """The console's shared state (one per web process)."""

    settings: Settings
    secret: str
    cookie_secure: bool = False
    clock: Clock | None = None
    service_factory: Callable[[], Pipeline] | None = None
    _service: Pipeline | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if len(self.secret.strip()) < MIN_SECRET:
            raise ConfigError(f"{SECRET_ENV} must have at least {MIN_SECRET} characters")
        self.clock = self.clock or clock_from(self.settings.clock_file)
        self._session_signer = URLSafeTimedSerializer(self.secret, salt="rp-session")
        self._login_signer = URLSafeTimedSerializer(self.secret, salt="rp-login")

    @cached_property
    def read_engine(self) -> Engine:
        # Reads never take SQLite's write lock; PostgreSQL is unaffected.
        return make_engine(self.settings.database_url, write_lock=False)

    @cached_property
    def write_engine(self) -> Engine:
        return make_engine(self.settings.database_url)

    def now(self) -> datetime:
        assert self.clock is not None
        return self.clock.now()

    @contextmanager
    def reading(self) -> Iterator[Session]:
        with make_sessions(self.read_engine)() as session:
            yield session

    @contextmanager
    def writing(self) -> Iterator[Session]:
        with make_sessions(self.write_engine)() as session, session.begin():
            yield session

    def service(self) -> Pipeline:
        """The pipeline's service (built on first use): operator actions go through it."""
        if self._service is None:
            factory = self.service_factory or _default_service(self.settings)
            self._service = factory()
        return self._service

    # -- cookies -------------------------------------------------------------------
    def session_cookie(self, user_id: int, version: int) -> str:
        return self._session_signer.dumps(
            {"u": user_id, "v": version, "c": secrets.token_urlsafe(24)}
        )

    def read_session(self, raw: str | None) -> dict[str, Any] | None:
        """The signed session, or None when absent, tampered with or expired."""
        if not raw:
            return None
        try:
            data = self._session_signer.loads(raw, max_age=SESSION_MAX_AGE_S)
        except BadSignature:  # SignatureExpired included
            return None
        ok = isinstance(data, dict) and {"u", "v", "c"} <= set(data)
        return data if ok else None

    def login_cookie(self, token: str) -> str:
        return self._login_signer.dumps(token)

    def read_login(self, raw: str | None) -> str | None:
        if not raw:
            return None
        try:
            token = self._login_signer.loads(raw, max_age=LOGIN_MAX_AGE_S)
        except BadSignature:
            return None
        return token if isinstance(token, str) else None

    def dispose(self) -> None:
        for name in ("read_engine", "write_engine"):
            engine = self.__dict__.pop(name, None)
            if engine is not None:
                engine.dispose()
