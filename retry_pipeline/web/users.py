"""Console users (argon2id password hashes) and login throttling, both in SQL.

Throttling is stored in ``console_login_failure`` (one row per ``user:NAME`` and per
``addr:IP``), so every web process applies the same limits: after ``FREE_FAILURES``
failures within ``WINDOW`` a key must wait 2, 4, 8 … seconds (at most ``MAX_DELAY``)
after its last failure before a password is even checked. A success clears the user's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from retry_pipeline.adapters.orm import LoginFailureRow, UserRow

USERNAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
OFFICE = re.compile(r"^[\w.:/-]{1,32}$")
MIN_PASSWORD = 8
FREE_FAILURES = 5
WINDOW = timedelta(minutes=15)
MAX_DELAY = timedelta(minutes=5)

_hasher = PasswordHasher()  # argon2id, the library's current defaults
# Checked against when the user does not exist, so both cases take as long.
_DUMMY_HASH = _hasher.hash("not a password of anyone")


class UserError(ValueError):
    """A user name, office or password that cannot be used (one line, for the CLI)."""


@dataclass(frozen=True)
class User:
    """A console login as the application sees it (never the hash)."""

    id: int
    username: str
    office: str
    is_operator: bool
    session_version: int


def _user(row: UserRow) -> User:
    return User(row.id, row.username, row.office, row.is_operator, row.session_version)


def check_password(password: str) -> None:
    """Refuse passwords too short to be one."""
    if len(password) < MIN_PASSWORD:
        raise UserError(f"the password must have at least {MIN_PASSWORD} characters")


def add_user(
    session: Session, username: str, office: str, password: str, *, operator: bool, now: datetime
) -> User:
    """Create a user; a taken user name is refused."""
    if not USERNAME.match(username):
        raise UserError("a user name is 1-64 letters, digits or _ . @ -")
    if not OFFICE.match(office):
        raise UserError("an office code is 1-32 letters, digits or _ . : / -")
    check_password(password)
    row = UserRow(
        username=username,
        office=office,
        is_operator=operator,
        password_hash=_hasher.hash(password),
        session_version=1,
        created_at=now,
        updated_at=now,
    )
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        raise UserError(f"user {username} already exists") from None
    return _user(row)


def list_users(session: Session) -> list[User]:
    """Every user, by name."""
    return [_user(r) for r in session.scalars(select(UserRow).order_by(UserRow.username))]


def get_user(session: Session, user_id: int) -> User | None:
    """The user with this id, if it still exists."""
    row = session.get(UserRow, user_id)
    return _user(row) if row is not None else None


def remove_user(session: Session, username: str) -> bool:
    """Delete a user (their sessions stop working at once); False if unknown."""
    result = session.execute(delete(UserRow).where(UserRow.username == username))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def set_password(session: Session, username: str, password: str, now: datetime) -> bool:
    """A new password; every session of the user is logged out. False if unknown."""
    check_password(password)
    row = session.scalars(select(UserRow).where(UserRow.username == username)).first()
    if row is None:
        return False
    row.password_hash = _hasher.hash(password)
    row.session_version += 1
    row.updated_at = now
    return True


def authenticate(session: Session, username: str, password: str) -> User | None:
    """The user when the password matches (a slow hash either way), else None.

    Read-only: run it outside a write transaction (SQLite would hold its write lock
    for the whole hash); ``upgrade_hash`` rehashes afterwards when parameters changed.
    """
    row = session.scalars(select(UserRow).where(UserRow.username == username)).first()
    try:
        _hasher.verify(row.password_hash if row is not None else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return None
    if row is None:
        return None
    return _user(row)


def upgrade_hash(session: Session, user_id: int, password: str) -> None:
    """Rehash a just-verified password when the hash parameters have changed."""
    row = session.get(UserRow, user_id)
    if row is not None and _hasher.check_needs_rehash(row.password_hash):
        row.password_hash = _hasher.hash(password)


def _keys(username: str, address: str) -> list[str]:
    return [f"user:{username[:100]}", f"addr:{address[:100]}"]


def _delay(failures: int) -> timedelta:
    if failures < FREE_FAILURES:
        return timedelta(0)
    return min(timedelta(seconds=2 ** (failures - FREE_FAILURES + 1)), MAX_DELAY)


def wait_before_login(
    session: Session, username: str, address: str, now: datetime
) -> timedelta | None:
    """How long this user name or address must still wait, or None when it may try."""
    rows = session.scalars(
        select(LoginFailureRow).where(LoginFailureRow.key.in_(_keys(username, address)))
    )
    waits = [
        r.last_failure_at + _delay(r.failures) - now
        for r in rows
        if now - r.last_failure_at < WINDOW and r.last_failure_at + _delay(r.failures) > now
    ]
    return max(waits) if waits else None


def record_failure(session: Session, username: str, address: str, now: datetime) -> None:
    """Count a failed login against the user name and the address."""
    for key in _keys(username, address):
        row = session.get(LoginFailureRow, key, with_for_update=True)
        if row is None:
            try:
                with session.begin_nested():
                    session.add(LoginFailureRow(key=key, failures=1, last_failure_at=now))
                continue
            except IntegrityError:  # another process inserted it meanwhile
                row = session.get(LoginFailureRow, key, with_for_update=True)
                assert row is not None
        row.failures = 1 if now - row.last_failure_at >= WINDOW else row.failures + 1
        row.last_failure_at = now


def clear_failures(session: Session, username: str, address: str) -> None:
    """A successful login forgets the user name's failures (not the address's: logging
    in to one's own account must not lift the limit on guessing others')."""
    session.execute(
        delete(LoginFailureRow).where(LoginFailureRow.key == _keys(username, address)[0])
    )


def end_sessions(session: Session, user_id: int) -> None:
    """Log the user out everywhere (their signed cookies carry the old version)."""
    row = session.get(UserRow, user_id)
    if row is not None:
        row.session_version += 1
