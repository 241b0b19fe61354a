"""``retry-pipeline user ...`` (console logins) and ``retry-pipeline web`` (the console)."""

from __future__ import annotations

import sys
from typing import Any

import click
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from retry_pipeline.adapters.db import make_engine, make_sessions
from retry_pipeline.clock import clock_from
from retry_pipeline.config import Settings
from retry_pipeline.errors import ConfigError

USAGE_ERROR = 2


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def _read_password() -> str:
    """The password from standard input: its first line, without the line break."""
    line = sys.stdin.readline()
    password = line.rstrip("\r\n")
    if not password:
        raise click.UsageError("no password on standard input (use --password-stdin)")
    return password


def _fail(message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(USAGE_ERROR)


class _UserGroup(click.Group):
    """Database errors (not migrated, unreachable) become one line, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DBAPIError as exc:
            first = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
            click.echo(
                f"Error: the database cannot be used ({first}); "
                "is RETRY_PIPELINE_DATABASE_URL right and `retry-pipeline db upgrade` done?",
                err=True,
            )
            sys.exit(1)


@click.group(name="user", cls=_UserGroup)
def user_group() -> None:
    """Console logins: office staff (one office) and operators (every office)."""


def _sessions(settings: Settings) -> sessionmaker[Session]:
    return make_sessions(make_engine(settings.database_url))


@user_group.command(name="add")
@click.argument("username")
@click.option("--office", required=True, help="Office code (事務所) whose applications they see.")
@click.option("--operator", is_flag=True, help="An operator: every office and operator pages.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def user_add(username: str, office: str, operator: bool, password_stdin: bool) -> None:
    """Create a login; the password is read from standard input, never an argument."""
    from retry_pipeline.web.users import UserError, add_user

    if not password_stdin:
        raise click.UsageError("the password is only read from standard input: --password-stdin")
    settings = _settings()
    password = _read_password()
    now = clock_from(settings.clock_file).now()
    try:
        with _sessions(settings)() as session, session.begin():
            user = add_user(session, username, office, password, operator=operator, now=now)
    except UserError as exc:
        _fail(str(exc))
        return
    role = "operator" if user.is_operator else "office user"
    click.echo(f"created {role} {user.username} (office {user.office})")


@user_group.command(name="list")
def user_list() -> None:
    """Every login: user name, office, role (never a password or its hash)."""
    from retry_pipeline.web.users import list_users

    with _sessions(_settings())() as session:
        users = list_users(session)
    for u in users:
        click.echo(f"{u.username}\t{u.office}\t{'operator' if u.is_operator else 'office'}")
    if not users:
        click.echo("no users", err=True)


@user_group.command(name="remove")
@click.argument("username")
def user_remove(username: str) -> None:
    """Delete a login; their open sessions stop working at once."""
    from retry_pipeline.web.users import remove_user

    with _sessions(_settings())() as session, session.begin():
        removed = remove_user(session, username)
    if not removed:
        _fail(f"no user {username}")
    click.echo(f"removed {username}")


@user_group.command(name="passwd")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def user_passwd(username: str, password_stdin: bool) -> None:
    """Set a new password (from standard input); the user's sessions are logged out."""
    from retry_pipeline.web.users import UserError, set_password

    if not password_stdin:
        raise click.UsageError("the password is only read from standard input: --password-stdin")
    settings = _settings()
    password = _read_password()
    now = clock_from(settings.clock_file).now()
    try:
        with _sessions(settings)() as session, session.begin():
            changed = set_password(session, username, password, now)
    except UserError as exc:
        _fail(str(exc))
        return
    if not changed:
        _fail(f"no user {username}")
    click.echo(f"password of {username} changed")


@click.command(name="web")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
def web(host: str, port: int) -> None:
    """Serve the office console (needs RETRY_PIPELINE_WEB_SECRET, 32+ characters)."""
    import uvicorn

    from retry_pipeline.logs import configure, json_enabled
    from retry_pipeline.web.app import create_app
    from retry_pipeline.web.console import Console, cookie_secure_from_env, secret_from_env

    settings = _settings()
    try:
        secret = secret_from_env()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    configure()
    app = create_app(Console(settings, secret, cookie_secure=cookie_secure_from_env()))
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_config=None if json_enabled() else uvicorn.config.LOGGING_CONFIG,
        proxy_headers=True,
        server_header=False,
    )
