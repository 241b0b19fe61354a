"""The one gate every route but ``/login`` and ``/metrics`` goes through.

``current_scope`` reads the signed session cookie, checks the user still exists with
the same session version, and yields the ``Scope``; ``operator_scope`` adds the
operator check; ``posted_scope`` / ``operator_post`` add the CSRF check of forms.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Form, Request

from retry_pipeline.web.console import SESSION_COOKIE, Console
from retry_pipeline.web.scope import Scope, scope_for
from retry_pipeline.web.users import get_user


class NotLoggedIn(Exception):
    """No valid session: pages answer 303 to /login, the API 401."""


class Forbidden(Exception):
    """Logged in, but not allowed (an office user on an operator page, a bad CSRF token)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def console_of(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


def current_scope(request: Request) -> Scope:
    """The logged-in user's scope (office users: their office only)."""
    console = console_of(request)
    data = console.read_session(request.cookies.get(SESSION_COOKIE))
    if data is None or not isinstance(data["u"], int):
        raise NotLoggedIn()
    with console.reading() as session:
        user = get_user(session, data["u"])
    if user is None or user.session_version != data["v"]:
        raise NotLoggedIn()  # removed, password changed, or logged out
    return scope_for(
        user_id=user.id,
        username=user.username,
        home_office=user.office,
        is_operator=user.is_operator,
        csrf=str(data["c"]),
        requested_office=request.query_params.get("office"),
    )


ScopeDep = Annotated[Scope, Depends(current_scope)]


def operator_scope(scope: ScopeDep) -> Scope:
    """Operators only; office users get 403."""
    if not scope.is_operator:
        raise Forbidden("この画面は運用担当者のみ利用できます。")
    return scope


OperatorDep = Annotated[Scope, Depends(operator_scope)]


def _check_csrf(scope: Scope, token: str) -> None:
    if not token or not hmac.compare_digest(token.encode(), scope.csrf.encode()):
        raise Forbidden("画面の有効期限が切れました。もう一度操作してください。")


def posted_scope(scope: ScopeDep, csrf_token: Annotated[str, Form()] = "") -> Scope:
    """A form post of a logged-in user, with the session's CSRF token."""
    _check_csrf(scope, csrf_token)
    return scope


def operator_post(scope: OperatorDep, csrf_token: Annotated[str, Form()] = "") -> Scope:
    """An operator's form post, with the session's CSRF token."""
    _check_csrf(scope, csrf_token)
    return scope


PostedDep = Annotated[Scope, Depends(posted_scope)]
OperatorPostDep = Annotated[Scope, Depends(operator_post)]
