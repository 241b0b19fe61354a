"""Short errors for every ``retry-pipeline`` command (issue 12).

An unreachable or unmigrated database, or a bad broker or database URL, gives one
line on stderr and a non-zero exit instead of a traceback: 1 when a service does
not answer or is not migrated, 2 when a URL is malformed (bad input).
Passwords in URLs are masked.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from retry_pipeline import names
from retry_pipeline.config import PREFIX, env_setting
from retry_pipeline.errors import ConfigError, RegistryUnavailable
from retry_pipeline.redact import mask_url

UNAVAILABLE = 1
USAGE = 2
UPGRADE_HINT = "run `retry-pipeline db upgrade`"
# PostgreSQL: undefined_table, undefined_column; SQLite says it in the message.
_UNMIGRATED_CODES = {"42P01", "42703"}
_UNMIGRATED_TEXT = ("no such table", "no such column")
BROKER_SCHEMES = {"redis", "rediss", "amqp", "amqps", "pyamqp", "memory", "sentinel"}


def check_urls(environ: dict[str, str] | None = None) -> None:
    """Refuse a malformed database, registry or broker URL before any command runs."""
    env = dict(os.environ if environ is None else environ)
    try:
        for name in ("DATABASE_URL", "REGISTRY_URL"):
            raw = env_setting(name, "", env)
            if raw:
                try:
                    make_url(raw)
                except ArgumentError:
                    raise ConfigError(f"{PREFIX}{name} is not a database URL") from None
        broker = env_setting("BROKER_URL", "", env)
        if broker:
            scheme = broker.split("://", 1)[0].lower() if "://" in broker else ""
            if scheme not in BROKER_SCHEMES:
                # not shown: a malformed URL may hide its password from masking
                raise ConfigError(
                    f"{PREFIX}BROKER_URL is not a broker URL (redis://, rediss://, amqp://)"
                )
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def short_error(exc: BaseException) -> tuple[str, int] | None:
    """The one line and exit code for an environment failure, or None (not ours to shorten)."""
    url = _shown("DATABASE_URL", "sqlite:///retry_pipeline.sqlite3")
    if isinstance(exc, RegistryUnavailable):
        return f"Kei-MOTAS registry: {exc}", UNAVAILABLE
    if isinstance(exc, NoSuchModuleError | ArgumentError):
        return f"database URL {url} cannot be used: {exc}", USAGE
    if isinstance(exc, DBAPIError):
        orig = exc.orig
        code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        text = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
        if code in _UNMIGRATED_CODES or any(t in text for t in _UNMIGRATED_TEXT):
            return f"database {url} is not migrated ({text}): {UPGRADE_HINT}", UNAVAILABLE
        return f"database {url} unreachable: {text}", UNAVAILABLE
    if _is_broker_error(exc):
        broker = _shown("BROKER_URL", names.DEFAULT_BROKER_URL)
        return f"broker {broker} unreachable: {exc}", UNAVAILABLE
    return None


def _shown(name: str, default: str) -> str:
    try:
        return mask_url(env_setting(name, default))
    except ConfigError:
        return f"({PREFIX}{name})"


def _is_broker_error(exc: BaseException) -> bool:
    try:
        import kombu.exceptions
        import redis.exceptions
    except ImportError:  # pragma: no cover
        return False
    return isinstance(
        exc, kombu.exceptions.OperationalError | redis.exceptions.ConnectionError
    )  # fmt: skip


class ShortErrorGroup(click.Group):
    """A click group whose commands fail with one line, never a traceback, on such errors."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """Bad input (a usage error) is one line on stderr and exit 2, without Click's
        usage block: ``Error: <what is wrong>``."""
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.UsageError as exc:
            click.echo(f"Error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        check_urls()
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:
            found = short_error(exc)
            if found is None:
                raise
            message, code = found
            click.echo(f"error: {message}", err=True)
            ctx.exit(code)
