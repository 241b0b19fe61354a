"""The office console (ASGI, FastAPI + Jinja2): login, the office page, the API, metrics."""

from __future__ import annotations

import logging
import secrets
from typing import Annotated, Any

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from retry_pipeline.logs import bind
from retry_pipeline.model import CertificateKind
from retry_pipeline.web import queries
from retry_pipeline.web.auth import Forbidden, NotLoggedIn, PostedDep, ScopeDep
from retry_pipeline.web.console import (
    LOGIN_COOKIE,
    LOGIN_MAX_AGE_S,
    SESSION_COOKIE,
    SESSION_MAX_AGE_S,
    Console,
)
from retry_pipeline.web.metrics import registry_for
from retry_pipeline.web.pages import render
from retry_pipeline.web.scope import Scope
from retry_pipeline.web.users import (
    authenticate,
    clear_failures,
    end_sessions,
    record_failure,
    upgrade_hash,
    wait_before_login,
)

log = logging.getLogger(__name__)
NOT_FOUND = {"detail": "not found"}  # the same for an unknown and another office's application


def _set_cookie(response: Response, console: Console, name: str, value: str, age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=age,
        httponly=True,
        samesite="strict",
        secure=console.cookie_secure,
        path="/",
    )


def _filters(parked: str | None, kind: str | None) -> tuple[bool | None, str | None]:
    parked_flag = {"1": True, "0": False}.get(parked or "")
    kinds = {k.value for k in CertificateKind}
    return parked_flag, (kind if kind in kinds else None)


def create_app(console: Console) -> FastAPI:
    """The console over ``console``'s database (no API docs: nothing public but /login)."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.state.console = console
    metrics_registry = registry_for(console.read_engine, console.now)

    @app.exception_handler(NotLoggedIn)
    async def _not_logged_in(request: Request, _exc: NotLoggedIn) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": "login required"}, status_code=401)
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": "forbidden"}, status_code=403)
        return render(request, "error.html", None, 403, title="利用できません", message=exc.message)

    @app.exception_handler(404)
    async def _not_found(request: Request, _exc: Exception) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse(NOT_FOUND, status_code=404)
        message = "お探しの申請は見つかりませんでした。"
        return render(request, "error.html", None, 404, title="見つかりません", message=message)

    # -- login -------------------------------------------------------------------
    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request) -> Response:
        token = secrets.token_urlsafe(24)
        response = render(request, "login.html", None, csrf_token=token, error=None)
        _set_cookie(response, console, LOGIN_COOKIE, console.login_cookie(token), LOGIN_MAX_AGE_S)
        return response

    @app.post("/login")
    def login(
        request: Request,
        username: Annotated[str, Form()] = "",
        password: Annotated[str, Form()] = "",
        csrf_token: Annotated[str, Form()] = "",
    ) -> Response:
        expected = console.read_login(request.cookies.get(LOGIN_COOKIE))
        if not expected or not secrets.compare_digest(expected, csrf_token):
            message = "画面の有効期限が切れました。ログイン画面を開き直してください。"
            return render(request, "error.html", None, 403, title="ログインできません",
                          message=message)  # fmt: skip
        address = request.client.host if request.client else "unknown"
        username = username.strip()[:64]
        now = console.now()
        with console.reading() as session:
            wait = wait_before_login(session, username, address, now)
        if wait is not None:
            seconds = max(int(wait.total_seconds()) + 1, 1)
            error = f"ログインの失敗が続いたため、{seconds} 秒ほど待ってからやり直してください。"
            response = render(request, "login.html", None, 429, csrf_token=csrf_token,
                              error=error)  # fmt: skip
            response.headers["Retry-After"] = str(seconds)
            return response
        with console.reading() as session:
            user = authenticate(session, username, password)  # the slow hash, no write lock
        with console.writing() as session:
            if user is None:
                record_failure(session, username, address, now)
            else:
                clear_failures(session, username, address)
                upgrade_hash(session, user.id, password)
        if user is None:
            log.warning("failed login for %r from %s", username, address)
            error = "ユーザー名またはパスワードが違います。"
            return render(request, "login.html", None, 401, csrf_token=csrf_token, error=error)
        log.info("login of %s (office %s) from %s", user.username, user.office, address)
        redirect = RedirectResponse("/", status_code=303)
        cookie = console.session_cookie(user.id, user.session_version)
        _set_cookie(redirect, console, SESSION_COOKIE, cookie, SESSION_MAX_AGE_S)
        redirect.delete_cookie(LOGIN_COOKIE, path="/")
        return redirect

    @app.post("/logout")
    def logout(scope: PostedDep) -> Response:
        with console.writing() as session:
            end_sessions(session, scope.user_id)  # the cookie stops working everywhere
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    # -- the office page and its API ----------------------------------------------
    def _office_data(scope: Scope, parked: str | None, kind: str | None) -> dict[str, Any]:
        parked_flag, kind_name = _filters(parked, kind)
        now = console.now()
        with console.reading() as session:
            every = queries.live_applications(session, scope, console.settings, now)
            decided = queries.decided_today(session, scope, now)
            offices = queries.offices(session) if scope.is_operator else [scope.home_office]
        shown = [
            a
            for a in every
            if (parked_flag is None or a["parked"] == parked_flag)
            and (kind_name is None or kind_name in a["missing"])
        ]
        return {
            "office": scope.office,
            "totals": queries.totals(every, decided),
            "applications": shown,
            "decided_today": decided,
            "offices": offices,
            "filters": {"parked": parked_flag, "kind": kind_name},
        }

    @app.get("/", response_class=HTMLResponse)
    def office_page(
        request: Request, scope: ScopeDep, parked: str | None = None, kind: str | None = None
    ) -> Response:
        data = _office_data(scope, parked, kind)
        return render(request, "office.html", scope, **data)

    @app.get("/api/applications")
    def api_applications(
        scope: ScopeDep, parked: str | None = None, kind: str | None = None
    ) -> dict[str, Any]:
        return _office_data(scope, parked, kind)

    def _detail(scope: Scope, application: str) -> dict[str, Any] | None:
        with bind(application=application), console.reading() as session:
            return queries.application_detail(
                session, scope, application, console.settings, console.now()
            )

    @app.get("/applications/{application}", response_class=HTMLResponse)
    def application_page(request: Request, scope: ScopeDep, application: str) -> Response:
        detail = _detail(scope, application)
        if detail is None:
            message = "お探しの申請は見つかりませんでした。"
            return render(request, "error.html", scope, 404, title="見つかりません",
                          message=message)  # fmt: skip
        return render(request, "application.html", scope, app=detail)

    @app.get("/api/applications/{application}")
    def api_application(scope: ScopeDep, application: str) -> Response:
        detail = _detail(scope, application)
        if detail is None:
            return JSONResponse(NOT_FOUND, status_code=404)
        return JSONResponse(detail)

    # -- metrics (no login: counts only, no application data) ----------------------
    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(metrics_registry), media_type=CONTENT_TYPE_LATEST)

    from retry_pipeline.web.operator import router

    app.include_router(router)
    return app
