"""Who is asking and which offices they may see: the one rule of office isolation.

Every route of the console gets a ``Scope`` from ``app.current_scope`` (the only place
it is built) and every query of ``queries`` filters through ``Scope.clause``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, true
from sqlalchemy.orm import InstrumentedAttribute


@dataclass(frozen=True)
class Scope:
    """A logged-in user and the office they are looking at."""

    user_id: int
    username: str
    home_office: str
    is_operator: bool
    csrf: str  # the session's CSRF token, required on every form post
    office: str | None  # the office shown; None: every office (operators only)

    def __post_init__(self) -> None:
        if not self.is_operator and self.office != self.home_office:
            raise ValueError("an office user only ever sees their own office")

    def allows(self, office: str) -> bool:
        """Whether a record of ``office`` may be shown."""
        return self.office is None or office == self.office

    def clause(self, column: InstrumentedAttribute[str]) -> ColumnElement[bool]:
        """The SQL condition restricting ``column`` (an office column) to this scope."""
        if self.office is None:
            return true()
        return column == self.office


def scope_for(
    *,
    user_id: int,
    username: str,
    home_office: str,
    is_operator: bool,
    csrf: str,
    requested_office: str | None,
) -> Scope:
    """Office users see their office whatever they ask; operators choose (or all)."""
    office = ((requested_office or "").strip() or None) if is_operator else home_office
    return Scope(user_id, username, home_office, is_operator, csrf, office)
