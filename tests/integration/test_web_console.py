"""The office console over a real database (SQLite and PostgreSQL), route by route.

Office isolation: every page, API route and operator page is tried by an anonymous
client, an office user of each office and an operator; another office's application
must answer exactly as an unknown one; tampered cookies and missing CSRF tokens fail.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from retry_pipeline.adapters.orm import ChainRow, DeadLetterRow, HistoryRow, OutboxRow, UserRow
from retry_pipeline.adapters.store import RetryStore
from retry_pipeline.clock import FixedClock
from retry_pipeline.config import Settings
from retry_pipeline.web.app import create_app
from retry_pipeline.web.console import SESSION_COOKIE, Console
from retry_pipeline.web.users import FREE_FAILURES, add_user
from tests.web_seed import END, KOBE, OSAKA, Recorder, make_service, seed

SECRET = "s" * 40
PASSWORD = "correct horse battery"
PAGES = ["/", "/?office=KEI-KOBE", "/applications/OSAKA-LIVE", "/applications/KOBE-LIVE"]
API = ["/api/applications", "/api/applications/OSAKA-LIVE", "/api/applications/KOBE-LIVE"]
OPERATOR_PAGES = ["/operator/dead-letters", "/operator/outcomes"]
OPERATOR_POSTS = [
    "/operator/dead-letters/1/replay",
    "/operator/dead-letters/1/resolve",
    "/operator/outcomes/1/resend",
]
APPLICATIONS = ["OSAKA-LIVE", "OSAKA-PARKED", "OSAKA-RESUMED", "KOBE-LIVE"]


@dataclass
class Env:
    console: Console
    recorder: Recorder
    db_url: str

    def client(self) -> TestClient:
        return TestClient(create_app(self.console), follow_redirects=False)

    def rows(self, model: type) -> list:  # type: ignore[type-arg]
        with self.console.reading() as session:
            return list(session.scalars(select(model)))


@pytest.fixture
def env(db_url: str) -> Iterator[Env]:
    seed(db_url)
    clock = FixedClock(END)
    recorder = Recorder()
    console = Console(
        Settings(database_url=db_url),
        SECRET,
        clock=clock,
        service_factory=lambda: make_service(RetryStore.from_url(db_url), db_url, clock, recorder),
    )
    with console.writing() as session:
        add_user(session, "osaka", OSAKA, PASSWORD, operator=False, now=END)
        add_user(session, "kobe", KOBE, PASSWORD, operator=False, now=END)
        add_user(session, "ops", "HQ", PASSWORD, operator=True, now=END)
    yield Env(console, recorder, db_url)
    console.dispose()


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "no CSRF field in the page"
    return found.group(1)


def login(client: TestClient, username: str, password: str = PASSWORD) -> str:
    """Log in; returns the session's CSRF token (from the office page)."""
    form = client.get("/login")
    assert form.status_code == 200
    r = client.post(
        "/login",
        data={"username": username, "password": password, "csrf_token": csrf_of(form.text)},
    )
    assert r.status_code == 303, r.text
    assert r.headers["location"] == "/"
    return csrf_of(client.get("/").text)


def shown(text: str) -> set[str]:
    return {a for a in APPLICATIONS if a in text}


# -- login ---------------------------------------------------------------------------


def test_login_form_has_fields_and_good_login_sets_a_strict_httponly_cookie(env: Env) -> None:
    client = env.client()
    form = client.get("/login")
    assert 'name="username"' in form.text and 'name="password"' in form.text
    r = client.post(
        "/login", data={"username": "osaka", "password": PASSWORD, "csrf_token": csrf_of(form.text)}
    )
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE))
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()


@pytest.mark.parametrize("username,password", [("osaka", "wrong password"), ("nobody", PASSWORD)])
def test_bad_credentials_answer_401_and_set_nothing(env: Env, username: str, password: str) -> None:
    client = env.client()
    form = client.get("/login")
    r = client.post(
        "/login",
        data={"username": username, "password": password, "csrf_token": csrf_of(form.text)},
    )
    assert r.status_code == 401
    assert "set-cookie" not in r.headers
    assert client.get("/").status_code == 303  # still anonymous


def test_login_without_csrf_token_is_refused(env: Env) -> None:
    client = env.client()
    client.get("/login")
    r = client.post("/login", data={"username": "osaka", "password": PASSWORD})
    assert r.status_code == 403 and "set-cookie" not in r.headers
    other = env.client()  # a token from another browser's form does not do either
    token = csrf_of(other.get("/login").text)
    r = client.post("/login", data={"username": "osaka", "password": PASSWORD, "csrf_token": token})
    assert r.status_code == 403


def test_repeated_failures_slow_down_even_the_right_password(env: Env) -> None:
    client = env.client()
    token = csrf_of(client.get("/login").text)
    for _ in range(FREE_FAILURES):
        r = client.post(
            "/login", data={"username": "kobe", "password": "x" * 9, "csrf_token": token}
        )
        assert r.status_code == 401
    r = client.post("/login", data={"username": "kobe", "password": PASSWORD, "csrf_token": token})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert "set-cookie" not in r.headers
    # the address is throttled too: another user from the same address waits as well
    r = client.post("/login", data={"username": "osaka", "password": PASSWORD, "csrf_token": token})
    assert r.status_code == 429


def test_passwords_are_stored_as_argon2_hashes(env: Env) -> None:
    for user in env.rows(UserRow):
        assert user.password_hash.startswith("$argon2id$")
        assert PASSWORD not in user.password_hash


# -- the gate: anonymous, tampered, logged out --------------------------------------


def test_anonymous_gets_no_application_data_anywhere(env: Env) -> None:
    client = env.client()
    for path in PAGES + OPERATOR_PAGES:
        r = client.get(path)
        assert r.status_code == 303 and r.headers["location"] == "/login", path
        assert not shown(r.text)
    for path in API:
        r = client.get(path)
        assert r.status_code == 401, path
        assert not shown(r.text)
    for path in OPERATOR_POSTS:
        assert client.post(path, data={"csrf_token": "x"}).status_code == 303
    assert env.rows(DeadLetterRow)[0].resolved_at is None


def test_a_tampered_cookie_is_anonymous(env: Env) -> None:
    client = env.client()
    login(client, "osaka")
    good = client.cookies[SESSION_COOKIE]
    payload, _, signature = good.rpartition(".")
    # The first character (the last one may only carry base64 padding bits).
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    for forged in (payload + "." + flipped, "x" + good, good[:-3]):
        client.cookies.clear()
        client.cookies.set(SESSION_COOKIE, forged)
        assert client.get("/").status_code == 303
        assert client.get("/api/applications").status_code == 401
    # a cookie signed with another secret does not pass either
    stranger = Console(env.console.settings, "t" * 40, clock=env.console.clock)
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, stranger.session_cookie(1, 1))
    assert client.get("/api/applications").status_code == 401


def test_logout_needs_csrf_and_ends_the_session_everywhere(env: Env) -> None:
    client = env.client()
    token = login(client, "osaka")
    stolen = client.cookies[SESSION_COOKIE]
    assert client.post("/logout").status_code == 403  # no CSRF token
    assert client.get("/").status_code == 200
    r = client.post("/logout", data={"csrf_token": token})
    assert r.status_code == 303 and r.headers["location"] == "/login"
    other = env.client()
    other.cookies.set(SESSION_COOKIE, stolen)
    assert other.get("/api/applications").status_code == 401


def test_a_removed_user_is_logged_out(env: Env) -> None:
    from retry_pipeline.web.users import remove_user

    client = env.client()
    login(client, "kobe")
    with env.console.writing() as session:
        assert remove_user(session, "kobe")
    assert client.get("/").status_code == 303


# -- isolation, route by route -------------------------------------------------------


@pytest.mark.parametrize(
    "user,own,other",
    [("osaka", {"OSAKA-LIVE", "OSAKA-PARKED", "OSAKA-RESUMED"}, "KOBE-LIVE"),
     ("kobe", {"KOBE-LIVE"}, "OSAKA-LIVE")],
)  # fmt: skip
def test_an_office_sees_only_its_own_applications(
    env: Env, user: str, own: set[str], other: str
) -> None:
    client = env.client()
    login(client, user)
    home = "KEI-KOBE" if user == "osaka" else "KEI-OSAKA"  # asking for the other office
    for path in ("/", f"/?office={home}", "/?office="):
        page = client.get(path)
        assert page.status_code == 200
        assert shown(page.text) == own, path
    for path in ("/api/applications", f"/api/applications?office={home}"):
        data = client.get(path).json()
        listed = {a["application"] for a in data["applications"]}
        listed |= {d["application"] for d in data["decided_today"]}
        assert listed == own, path
    # another office's application is exactly as absent as an unknown one
    for base in ("/applications/", "/api/applications/"):
        theirs, unknown = client.get(base + other), client.get(base + "NO-SUCH-APP")
        assert theirs.status_code == unknown.status_code == 404
        assert theirs.text.replace(other, "X") == unknown.text.replace("NO-SUCH-APP", "X")
        assert other not in theirs.text
        mine = client.get(base + sorted(own)[0])
        assert mine.status_code == 200
    for path in OPERATOR_PAGES:
        r = client.get(path)
        assert r.status_code == 403 and not shown(r.text), path
    token = csrf_of(client.get("/").text)
    for path in OPERATOR_POSTS:
        assert client.post(path, data={"csrf_token": token}).status_code == 403, path
    assert all(d.resolved_at is None for d in env.rows(DeadLetterRow))
    assert env.recorder.outcomes == []


def test_the_office_page_reads_in_plain_japanese(env: Env) -> None:
    client = env.client()
    login(client, "osaka")
    page = client.get("/").text
    row = re.search(r'<tr class="parked" data-application="OSAKA-PARKED">(.*?)</tr>', page, re.S)
    assert row, "the parked application is not marked as parked"
    assert "受付終了のため停止中（翌業務日 08:30 に1回確認）" in row.group(1)
    assert "2026年11月30日（月）" in row.group(1)  # Friday's close: Monday 08:30
    live = re.search(r'data-application="OSAKA-LIVE">(.*?)</tr>', page, re.S)
    assert live and "リトライ 1／6 回目" in live.group(1) and "保適証" in live.group(1)
    assert "次回確認" in live.group(1) and "検査申請審査中" in live.group(1)
    decided = re.search(r'<table id="decided">(.*?)</table>', page, re.S)
    assert decided and "OSAKA-RESUMED" in decided.group(1) and "再審査へ" in decided.group(1)
    # what staff read: the page less its random CSRF value (which may spell "R8" by chance)
    readable = page.replace(csrf_of(page), "")
    for internal in ("next_day", "same_day", "R12", "R8", "chain", "phase"):
        assert internal not in readable, internal
    detail = client.get("/applications/OSAKA-RESUMED").text
    assert "前審査を再実行" in detail and "R8" not in detail.replace(csrf_of(detail), "")
    # filters
    parked_only = client.get("/?parked=1").text
    assert shown(parked_only) - {"OSAKA-RESUMED"} == {"OSAKA-PARKED"}
    insurance = client.get("/api/applications?kind=insurance").json()["applications"]
    assert [a["application"] for a in insurance] == ["OSAKA-PARKED"]


def test_an_operator_sees_every_office_and_can_choose_one(env: Env) -> None:
    client = env.client()
    login(client, "ops")
    assert shown(client.get("/").text) == set(APPLICATIONS)
    assert shown(client.get("/?office=KEI-KOBE").text) == {"KOBE-LIVE"}
    assert client.get("/api/applications/KOBE-LIVE").status_code == 200
    assert client.get("/operator/dead-letters").status_code == 200


# -- operator actions -----------------------------------------------------------------


def test_operator_replays_a_dead_letter_through_the_intake(env: Env) -> None:
    client = env.client()
    token = login(client, "ops")
    letters = {d.payload.startswith("{oops"): d.id for d in env.rows(DeadLetterRow)}
    good, bad = letters[False], letters[True]
    path = f"/operator/dead-letters/{good}/replay"
    assert client.post(path).status_code == 403  # no CSRF token
    assert "OSAKA-REPLAY" not in {c.application for c in env.rows(ChainRow)}
    r = client.post(path, data={"csrf_token": token})
    assert r.status_code == 303
    assert "OSAKA-REPLAY" in {c.application for c in env.rows(ChainRow)}
    letter = next(d for d in env.rows(DeadLetterRow) if d.id == good)
    assert letter.resolved_at is not None and letter.replay_result.startswith("再投入済み")
    page = client.get("/operator/dead-letters").text
    assert "再投入済み" in page
    # a body that is still not a report stays open, with the new reason recorded
    client.post(f"/operator/dead-letters/{bad}/replay", data={"csrf_token": token})
    letter = next(d for d in env.rows(DeadLetterRow) if d.id == bad)
    assert letter.resolved_at is None and letter.replay_result.startswith("再投入不可")
    client.post(f"/operator/dead-letters/{bad}/resolve", data={"csrf_token": token})
    letter = next(d for d in env.rows(DeadLetterRow) if d.id == bad)
    assert letter.resolved_at is not None and letter.resolved_by == "ops"
    # the office now sees the replayed application
    osaka = env.client()
    login(osaka, "osaka")
    assert client.get("/api/applications/OSAKA-REPLAY").status_code == 200
    assert osaka.get("/api/applications/OSAKA-REPLAY").status_code == 200


def test_operator_resends_an_unconfirmed_outcome(env: Env) -> None:
    client = env.client()
    token = login(client, "ops")
    (row,) = env.rows(OutboxRow)
    before = row.send_count
    page = client.get("/operator/outcomes").text
    assert "OSAKA-RESUMED" in page
    assert client.post(f"/operator/outcomes/{row.id}/resend").status_code == 403
    r = client.post(f"/operator/outcomes/{row.id}/resend", data={"csrf_token": token})
    assert r.status_code == 303
    assert [o.application for o in env.recorder.outcomes] == ["OSAKA-RESUMED"]
    (after,) = env.rows(OutboxRow)
    assert after.send_count == before + 1
    # unconfirmed, it goes again after its back-off, not at the relay's next tick
    assert after.sent_at is not None and after.next_send_at is not None
    assert after.next_send_at - after.sent_at >= timedelta(minutes=20)
    assert "再送しました" in client.get("/operator/outcomes").text


# -- metrics --------------------------------------------------------------------------


def test_metrics_need_no_login_and_come_from_sql(env: Env) -> None:
    client = env.client()
    text = client.get("/metrics").text
    assert 'retry_pipeline_live_chains{office="KEI-OSAKA",phase="same_day"} 1.0' in text
    assert 'retry_pipeline_live_chains{office="KEI-OSAKA",phase="next_day"} 1.0' in text
    assert 'retry_pipeline_live_chains{office="KEI-KOBE",phase="same_day"} 1.0' in text
    assert "retry_pipeline_parked_chains 1.0" in text
    assert "retry_pipeline_dead_letters 2.0" in text
    assert "retry_pipeline_unconfirmed_outcomes 1.0" in text
    assert 'retry_pipeline_decisions_today{outcome="resumed"} 1.0' in text
    assert 'retry_pipeline_decisions_today{outcome="auto_corrected"} 0.0' in text
    assert 'retry_pipeline_last_slot_lateness_seconds{stat="max"} 0.0' in text
    assert not shown(text)
    # a second web process over the same database agrees, and sees changes at once
    with env.console.writing() as session:
        session.add(
            DeadLetterRow(task="t", reason="r", payload="p", received_at=END, resolved_at=None)
        )
    other = Console(env.console.settings, SECRET, clock=env.console.clock)
    try:
        again = TestClient(create_app(other)).get("/metrics").text
    finally:
        other.dispose()
    assert "retry_pipeline_dead_letters 3.0" in again


def test_metrics_count_given_up_outcomes_and_late_reports(env: Env) -> None:
    client = env.client()
    before = client.get("/metrics").text
    assert "retry_pipeline_given_up_outcomes 0.0" in before
    assert "retry_pipeline_late_reports_today 0.0" in before
    assert "retry_pipeline_late_report_max_seconds 0.0" in before
    with env.console.writing() as session:
        (outcome,) = session.scalars(select(OutboxRow))
        outcome.gave_up_at = END  # the relay's cap reached, still unconfirmed
        lines = list(session.scalars(select(HistoryRow).order_by(HistoryRow.id)))
        lines[-1].late_s, lines[-1].recorded_at = 5400, END  # R4a: 90 minutes late, today
        lines[0].late_s, lines[0].recorded_at = 99_999, END - timedelta(days=1)  # not today
    after = client.get("/metrics").text
    assert "retry_pipeline_given_up_outcomes 1.0" in after
    assert "retry_pipeline_late_reports_today 1.0" in after
    assert "retry_pipeline_late_report_max_seconds 5400.0" in after
    with env.console.writing() as session:
        session.scalars(select(OutboxRow)).one().confirmed_at = END  # confirmed after all
    assert "retry_pipeline_given_up_outcomes 0.0" in client.get("/metrics").text


def test_an_old_hash_is_upgraded_at_login(env: Env) -> None:
    from argon2 import PasswordHasher

    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORD)
    with env.console.writing() as session:
        row = session.scalars(select(UserRow).where(UserRow.username == "kobe")).one()
        row.password_hash = weak
    login(env.client(), "kobe")
    (kobe,) = [u for u in env.rows(UserRow) if u.username == "kobe"]
    assert kobe.password_hash != weak and kobe.password_hash.startswith("$argon2id$")


def test_every_route_but_login_and_metrics_goes_through_the_scope(env: Env) -> None:
    from fastapi.routing import APIRoute

    from retry_pipeline.web.auth import current_scope
    from retry_pipeline.web.operator import router

    def calls(dependant: object) -> set[object]:
        found = {getattr(dependant, "call", None)}
        for sub in getattr(dependant, "dependencies", []):
            found |= calls(sub)
        return found

    app_routes = [r for r in create_app(env.console).routes if isinstance(r, APIRoute)]
    routes = app_routes + [r for r in router.routes if isinstance(r, APIRoute)]
    open_paths = {r.path for r in routes if current_scope not in calls(r.dependant)}
    assert open_paths == {"/login", "/metrics"}
    assert len(routes) == 13  # 8 of the app, 5 operator routes
