"""Operator pages: refused messages (replay, resolve) and unconfirmed outcomes (resend)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from retry_pipeline.web import queries
from retry_pipeline.web.auth import OperatorDep, OperatorPostDep, console_of
from retry_pipeline.web.operations import (
    ActionResult,
    replay_dead_letter,
    resend_outcome,
    resolve_dead_letter,
)
from retry_pipeline.web.pages import render

router = APIRouter(prefix="/operator")
_DONE: dict[str, ActionResult] = {}  # last result per operator, shown once after the redirect
_DONE_MAX = 1000


def _remember(username: str, result: ActionResult) -> None:
    _DONE[username] = result
    while len(_DONE) > _DONE_MAX:
        _DONE.pop(next(iter(_DONE)))


@router.get("/dead-letters", response_class=HTMLResponse)
def dead_letters_page(request: Request, scope: OperatorDep) -> Response:
    with console_of(request).reading() as session:
        open_letters = queries.dead_letters(session)
        resolved = queries.dead_letters(session, resolved=True, limit=50)
    return render(
        request,
        "dead_letters.html",
        scope,
        letters=open_letters,
        resolved=resolved,
        result=_DONE.pop(scope.username, None),
    )


@router.post("/dead-letters/{letter_id}/replay")
def replay(request: Request, scope: OperatorPostDep, letter_id: int) -> Response:
    result = replay_dead_letter(console_of(request).service(), letter_id, scope.username)
    _remember(scope.username, result)
    return RedirectResponse("/operator/dead-letters", status_code=303)


@router.post("/dead-letters/{letter_id}/resolve")
def resolve(request: Request, scope: OperatorPostDep, letter_id: int) -> Response:
    result = resolve_dead_letter(console_of(request).service(), letter_id, scope.username)
    _remember(scope.username, result)
    return RedirectResponse("/operator/dead-letters", status_code=303)


@router.get("/outcomes", response_class=HTMLResponse)
def outcomes_page(request: Request, scope: OperatorDep) -> Response:
    with console_of(request).reading() as session:
        pending = queries.unconfirmed_outcomes(session, scope)
    return render(
        request, "outcomes.html", scope, outcomes=pending, result=_DONE.pop(scope.username, None)
    )


@router.post("/outcomes/{outbox_id}/resend")
def resend(request: Request, scope: OperatorPostDep, outbox_id: int) -> Response:
    result = resend_outcome(console_of(request).service(), outbox_id)
    _remember(scope.username, result)
    return RedirectResponse("/operator/outcomes", status_code=303)
