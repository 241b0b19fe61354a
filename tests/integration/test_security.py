"""Security (issue 4): the office sees its own applications only (R15), SQL through bound
parameters only, no secret in the repository, a broker URL with a password works.

The office-view tests run on SQLite and PostgreSQL (``store``/``db_url`` fixtures);
the broker test starts a private redis-server with ``--requirepass``.
"""

from __future__ import annotations

import ast
import base64
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner, Result
from kombu.exceptions import OperationalError
from redis.backoff import NoBackoff
from redis.retry import Retry

from retry_pipeline import client
from retry_pipeline.adapters.store import RetryStore
from retry_pipeline.calendar import BusinessCalendar
from retry_pipeline.cli import main
from retry_pipeline.errors import InvalidReport
from retry_pipeline.messages import parse_report
from retry_pipeline.model import (
    Application,
    CertificateKind,
    Chain,
    Ending,
    Event,
    Outcome,
    Procedure,
    Report,
    history_line,
)
from retry_pipeline.policy import start_chain
from retry_pipeline.service.outcomes import ending_line
from retry_pipeline.views import office_view, render_office_view
from simulation.redis_server import free_port, redis_binary

ROOT = Path(__file__).resolve().parents[2]
IN_CI = bool(os.environ.get("CI"))
NOW = datetime(2026, 11, 27, 0, 0, tzinfo=UTC)  # 09:00 JST on a business day
DETECTED = "2026-11-27T08:36:00+09:00"
OWN = "OSK01"
OTHER = "KOB02"
SQL_OFFICE = "x' OR '1'='1"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The CLI reads RETRY_PIPELINE_* from the process environment: start from defaults.
    for key in list(os.environ):
        if key.startswith("RETRY_PIPELINE_"):
            monkeypatch.delenv(key)


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def record(
    store: RetryStore,
    calendar: BusinessCalendar,
    application: str,
    office: str,
    vehicle: str,
    *,
    via_schema: bool = True,
) -> Chain:
    """Record a report as the worker would: parsed from the message, then stored (R4).

    ``via_schema=False`` builds the domain report directly, so the store's own handling
    of hostile text is tested whatever the message schema lets through.
    """
    if via_schema:
        report = parse_report(
            {
                "application": application,
                "office": office,
                "procedure": "continuous",
                "vehicle": vehicle,
                "missing": ["safety"],
                "detected_at": DETECTED,
            }
        )
    else:
        report = Report(
            Application(application, office, Procedure.CONTINUOUS, vehicle),
            frozenset({CertificateKind.SAFETY}),
            frozenset(),
            datetime.fromisoformat(DETECTED),
        )
    chain = Chain.from_report(uuid.uuid4().hex, report, start_chain(report.detected_at, calendar))
    with store.unit() as u:
        u.chains.insert([chain], NOW)
        u.history.append(
            [
                history_line(
                    chain.chain_id, report.subject, Event.REPORTED, None, chain.cursor.slot,
                    report.missing, "phase same_day", NOW,
                )
            ]
        )  # fmt: skip
    return chain


def end(store: RetryStore, chain: Chain) -> None:
    ending = Ending(
        chain.chain_id, chain.subject, Outcome.AUTO_CORRECTED, chain.missing, chain.cursor.slot,
        "R8: last attempt", attempt_no=chain.attempts_made,
    )  # fmt: skip
    with store.unit() as u:
        u.chains.delete([chain.chain_id])
        u.outbox.add([ending], NOW)
        u.history.append([ending_line(ending, NOW)])


def status(db_url: str, *args: str) -> Result:
    return CliRunner().invoke(main, ["status", *args], env={"RETRY_PIPELINE_DATABASE_URL": db_url})


class Offices:
    """Two offices' applications: ours live, theirs live and ended."""

    def __init__(self, store: RetryStore, calendar: BusinessCalendar) -> None:
        self.own_app, self.own_vehicle = uid("OWN"), uid("VOWN")
        self.other_app, self.other_vehicle = uid("OTH"), uid("VOTH")
        self.other_ended_app, self.other_ended_vehicle = uid("OTE"), uid("VOTE")
        self.own = record(store, calendar, self.own_app, OWN, self.own_vehicle)
        self.other = record(store, calendar, self.other_app, OTHER, self.other_vehicle)
        ended = record(store, calendar, self.other_ended_app, OTHER, self.other_ended_vehicle)
        end(store, ended)
        self.other_ended_chain = ended.chain_id

    def other_office_traces(self) -> list[str]:
        """Strings that must never reach the other office's screen."""
        return [
            OTHER,
            self.other_vehicle,
            self.other_ended_vehicle,
            self.other.chain_id,
            self.other_ended_chain,
        ]


@pytest.fixture
def offices(store: RetryStore, calendar: BusinessCalendar) -> Offices:
    return Offices(store, calendar)


# --- R15: an office sees its own applications only ------------------------------------------


def test_r15_office_view_refuses_a_live_application_of_another_office(
    store: RetryStore, calendar: BusinessCalendar, offices: Offices
) -> None:
    view = office_view(store, calendar, OWN, offices.other_app)
    assert view == {"office": OWN, "applications": [], "ended": []}
    # The owner sees it (so the refusal above is about the office, not a missing record).
    theirs = office_view(store, calendar, OTHER, offices.other_app)
    assert [a["application"] for a in theirs["applications"]] == [offices.other_app]
    assert theirs["applications"][0]["vehicle"] == offices.other_vehicle


def test_r15_office_view_refuses_an_ended_application_of_another_office(
    store: RetryStore, calendar: BusinessCalendar, offices: Offices
) -> None:
    view = office_view(store, calendar, OWN, offices.other_ended_app)
    assert view == {"office": OWN, "applications": [], "ended": []}
    theirs = office_view(store, calendar, OTHER, offices.other_ended_app)
    assert [e["chain_id"] for e in theirs["ended"]] == [offices.other_ended_chain]


def test_r15_office_view_lists_only_its_own_chains(
    store: RetryStore, calendar: BusinessCalendar, offices: Offices
) -> None:
    view = office_view(store, calendar, OWN)
    assert [a["application"] for a in view["applications"]] == [offices.own_app]
    assert view["ended"] == []
    own = view["applications"][0]
    assert own["vehicle"] == offices.own_vehicle
    assert own["missing"] == ["safety"]
    assert [h["event"] for h in own["history"]] == ["reported"]
    shown = json.dumps(view, ensure_ascii=False) + render_office_view(view)
    for trace in offices.other_office_traces():
        assert trace not in shown
    assert offices.other_app not in shown
    assert offices.other_ended_app not in shown


def test_r15_status_cli_refuses_an_application_of_another_office(
    db_url: str, offices: Offices
) -> None:
    for application in (offices.other_app, offices.other_ended_app):
        for extra in ([], ["--json"]):
            result = status(db_url, "--office", OWN, "--application", application, *extra)
            assert result.exit_code == 1, result.output
            assert result.stdout == ""
            assert "リトライ対象の記録がありません" in result.stderr
            for trace in offices.other_office_traces():
                assert trace not in result.output


def test_r15_status_cli_shows_own_application(db_url: str, offices: Offices) -> None:
    result = status(db_url, "--office", OWN, "--application", offices.own_app, "--json")
    assert result.exit_code == 0, result.output
    view = json.loads(result.stdout)
    assert [a["application"] for a in view["applications"]] == [offices.own_app]
    # And the owner of the other application sees it with the same command.
    theirs = status(db_url, "--office", OTHER, "--application", offices.other_app)
    assert theirs.exit_code == 0, theirs.output
    assert offices.other_vehicle in theirs.stdout


def test_r15_status_cli_lists_only_own_office(db_url: str, offices: Offices) -> None:
    for extra in ([], ["--json"]):
        result = status(db_url, "--office", OWN, *extra)
        assert result.exit_code == 0, result.output
        assert offices.own_app in result.stdout
        assert offices.other_app not in result.output
        assert offices.other_ended_app not in result.output
        for trace in offices.other_office_traces():
            assert trace not in result.output


# --- SQL only through bound parameters --------------------------------------------------------


@pytest.mark.parametrize(
    "application",
    [SQL_OFFICE, "A-1'; DROP TABLE retry_chain; --", 'A-1" OR "1"="1', "A-1 OR 1=1"],
)
def test_sql_in_an_application_id_is_refused_by_the_schema(application: str) -> None:
    body = {
        "application": application,
        "office": OWN,
        "procedure": "continuous",
        "vehicle": "V-1",
        "missing": ["safety"],
        "detected_at": DETECTED,
    }
    with pytest.raises(InvalidReport, match="application"):
        parse_report(body)


@pytest.mark.parametrize("office", [SQL_OFFICE, "OSK01'; DROP TABLE retry_chain; --"])
def test_sql_in_an_office_code_is_refused_or_kept_literally(office: str) -> None:
    body = {
        "application": uid("SQL"),
        "office": office,
        "procedure": "continuous",
        "vehicle": "V-1",
        "missing": ["safety"],
        "detected_at": DETECTED,
    }
    try:
        report = parse_report(body)
    except InvalidReport as exc:
        assert "office" in str(exc)  # refused by the schema, naming the field
    else:
        assert report.subject.office == office  # or kept as the literal text


def test_sql_in_an_office_code_is_stored_and_read_back_literally(
    store: RetryStore, calendar: BusinessCalendar, offices: Offices
) -> None:
    app = uid("SQL")
    chain = record(store, calendar, app, SQL_OFFICE, uid("VSQL"), via_schema=False)
    with store.unit() as u:
        assert len(u.chains.of_office(None)) == 3  # ours, theirs, this one: nothing else touched
        (found,) = u.chains.of_office(SQL_OFFICE)
        assert found.chain_id == chain.chain_id
        assert found.subject.office == SQL_OFFICE  # the literal text, quotes included
        assert u.chains.of_office(f"{OWN}' OR '1'='1") == []
        assert u.chains.of_office("' OR 1=1 --") == []
        assert [c.subject.application for c in u.chains.of_office(OWN)] == [offices.own_app]
        assert u.chains.of_applications(["' OR '1'='1"], lock=False) == {}
        assert u.history.lines(application="' OR '1'='1") == []
        assert u.history.lines(office=SQL_OFFICE)[0].application == app
    view = office_view(store, calendar, SQL_OFFICE)
    assert [a["application"] for a in view["applications"]] == [app]
    assert office_view(store, calendar, f"{OWN}' OR '1'='1")["applications"] == []
    assert office_view(store, calendar, "' OR ''='", offices.own_app)["applications"] == []


def test_sql_in_an_office_code_through_the_cli(
    db_url: str, store: RetryStore, calendar: BusinessCalendar, offices: Offices
) -> None:
    app = uid("SQL")
    record(store, calendar, app, SQL_OFFICE, uid("VSQL"), via_schema=False)
    result = status(db_url, "--office", SQL_OFFICE, "--json")
    assert result.exit_code == 0, result.output
    view = json.loads(result.stdout)
    assert view["office"] == SQL_OFFICE
    assert [a["application"] for a in view["applications"]] == [app]
    injected = status(db_url, "--office", f"{OWN}' OR '1'='1", "--json")
    assert injected.exit_code == 0, injected.output
    assert json.loads(injected.stdout)["applications"] == []


def test_sql_in_a_dead_letter_is_stored_literally(store: RetryStore, offices: Offices) -> None:
    payload = "'); DROP TABLE dead_letter; DELETE FROM retry_chain; --"
    reason = "reason with 'quotes' and \"double\" and ; -- and %s and :name"
    with store.unit() as u:
        letter_id = u.dead_letters.add("retry_pipeline.report_missing", reason, payload, NOW)
    with store.unit() as u:
        (letter,) = [d for d in u.dead_letters.newest(100) if d.id == letter_id]
        assert letter.payload == payload
        assert letter.reason == reason
        assert len(u.chains.of_office(None)) == 2  # both offices' live chains are still there


SQL_CALLS = {"text", "exec_driver_sql", "execute", "executescript", "literal_column"}


def _builds_sql_from_strings(node: ast.expr) -> bool:
    """An f-string, ``%`` formatting, ``+`` concatenation or ``.format()`` of a string."""
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(v, ast.FormattedValue) for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add):
        return True
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "format"
    )


def test_no_sql_is_built_from_strings_in_the_package() -> None:
    offenders = []
    for path in sorted((ROOT / "retry_pipeline").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in SQL_CALLS and _builds_sql_from_strings(node.args[0]):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == [], f"SQL built from strings (use bound parameters): {offenders}"


def test_the_static_check_catches_string_built_sql() -> None:
    # The check above must be able to fail: it flags each way of building SQL text.
    for source in (
        "conn.execute(text(f\"select * from t where a = '{a}'\"))",
        "conn.exec_driver_sql('select * from t where a = %s' % a)",
        "conn.execute(text('select ' + col))",
        "conn.execute(text('select {}'.format(col)))",
    ):
        calls = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call) and n.args]
        assert any(
            (c.func.attr if isinstance(c.func, ast.Attribute) else getattr(c.func, "id", ""))
            in SQL_CALLS
            and _builds_sql_from_strings(c.args[0])
            for c in calls
        ), source


# --- no secret in the repository ------------------------------------------------------------------


def tracked_files() -> list[str]:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files"],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"git ls-files failed: {exc}")
    return [line for line in out.splitlines() if line]


ENV_SUBSTITUTION = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?[-?+][^}]*)?\}")
URL_CREDENTIALS = re.compile(r"[a-z][a-z0-9+.-]*://([^/\s:@\"']*):([^@\s/\"']+)@")
SECRET_ASSIGNMENT = re.compile(
    r"(?i)([A-Z0-9_-]*(?:PASSWORD|PASSWD|SECRET|TOKEN|BASIC[_-]AUTH|REQUIREPASS|API[_-]?KEY)"
    r"[A-Z0-9_-]*)[\"']?\s*[:=]\s*[\"']?([^\s\"',\]}]*)"
)
REQUIREPASS_ARG = re.compile(r"--requirepass[\"']?\s*,?\s*[\"']?([^\s\"',\]]+)")


def _names_a_secret_file(value: str) -> bool:
    """Compose's `secrets:` lists and `{file: ...}`, or a path of a mounted secret file."""
    return value.startswith(("[", "{", "/run/secrets/", "./secrets/"))


def secret_literals(text: str) -> list[str]:
    """Password-looking literals: anything not taken from the environment."""
    found = []
    for raw_line in text.splitlines():
        line = raw_line.split("#", 1)[0] if raw_line.lstrip().startswith("#") else raw_line
        line = ENV_SUBSTITUTION.sub("<env>", line)
        for _user, password in URL_CREDENTIALS.findall(line):
            if password != "<env>":
                found.append(raw_line.strip())
        for _key, value in SECRET_ASSIGNMENT.findall(line):
            if (
                value
                and value != "<env>"
                and not value.startswith("$")
                and not _names_a_secret_file(value)
            ):
                found.append(raw_line.strip())
        for value in REQUIREPASS_ARG.findall(line):
            if value != "<env>" and not value.startswith("$"):
                found.append(raw_line.strip())
    return found


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        ("BROKER: redis://:hunter2@redis:6379/0", True),
        ("BROKER: redis://:${REDIS_PASSWORD:?set it}@redis:6379/0", False),
        ("DB: postgresql+psycopg://retry:pw123@postgres:5432/retry", True),
        ("  POSTGRES_PASSWORD: changeme", True),
        ("  POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}", False),
        ('command: ["redis-server", "--requirepass", "hunter2"]', True),
        ('command: ["redis-server", "--requirepass", "${REDIS_PASSWORD:?x}"]', False),
        ('"--basic-auth=admin:admin"', True),
        ('"--basic-auth=${FLOWER_BASIC_AUTH:?set FLOWER_BASIC_AUTH=user:password}"', False),
        ('broker_url = "redis://:s3cr3t@localhost:6379/0"', True),
        ('broker_url = _env("RETRY_PIPELINE_BROKER_URL", "redis://127.0.0.1:6379/0")', False),
        ("# FLOWER_BASIC_AUTH=user:pass in a comment", False),
        ("  POSTGRES_PASSWORD_FILE: /run/secrets/postgres_password", False),
        ("  postgres_password: {file: ./secrets/postgres_password}", False),
        ("    secrets: [postgres_password]", False),
        ("  POSTGRES_PASSWORD_FILE: hunter2", True),
    ],
)
def test_secret_scan_tells_literals_from_environment(line: str, secret: bool) -> None:
    assert bool(secret_literals(line)) is secret


def test_compose_and_celery_config_hold_no_secret() -> None:
    tracked = tracked_files()
    for name in ("docker-compose.yml", "celeryconfig.py"):
        assert name in tracked
        text = (ROOT / name).read_text(encoding="utf-8")
        assert secret_literals(text) == [], f"{name} holds a secret literal"


def test_config_files_hold_no_secret() -> None:
    config_like = re.compile(
        r"(^|/)(Dockerfile|Makefile|\.ci/run|[^/]*\.(ya?ml|ini|toml|cfg|env|conf))$|"
        r"(^|/)(retry_pipeline/migrations/env\.py|celeryconfig\.py)$"
    )
    offenders = {}
    for name in tracked_files():
        if config_like.search(name) and (ROOT / name).is_file():
            found = secret_literals((ROOT / name).read_text(encoding="utf-8", errors="replace"))
            if found:
                offenders[name] = found
    assert offenders == {}


def test_no_secret_files_are_tracked() -> None:
    bad_name = re.compile(r"(^|/)(\.env(\..+)?|.*\.(pem|key|p12|pfx)|id_(rsa|ed25519|ecdsa))$")
    tracked = tracked_files()
    assert [n for n in tracked if bad_name.search(n) and not n.endswith(".env.example")] == []
    private_key = re.compile(r"-----BEGIN (RSA |EC |OPENSSH |DSA )?PRIVATE KEY-----")
    for name in tracked:
        path = ROOT / name
        if path.is_file() and path.stat().st_size < 2_000_000:
            assert not private_key.search(path.read_text(errors="replace")), name


def compose_services() -> dict[str, str]:
    """Service name -> its block of docker-compose.yml (text, by indentation)."""
    text = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    services: dict[str, list[str]] = {}
    current = None
    in_services = False
    for line in text.splitlines():
        if re.match(r"^\S", line):
            in_services = line.startswith("services:")
            current = None
            continue
        match = re.match(r"^  ([A-Za-z0-9_-]+):\s*$", line)
        if in_services and match:
            current = match.group(1)
            services[current] = []
        elif in_services and current is not None:
            services[current].append(line)
    return {name: "\n".join(lines) for name, lines in services.items()}


def test_compose_takes_passwords_from_secret_files() -> None:
    """Issue 13: secrets are files (compose secrets), never variables or argv."""
    text = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    assert "POSTGRES_PASSWORD_FILE: /run/secrets/postgres_password" in text
    assert "RETRY_PIPELINE_DATABASE_URL_FILE: /run/secrets/database_url" in text
    assert "RETRY_PIPELINE_BROKER_URL_FILE: /run/secrets/broker_url" in text
    assert "requirepass" not in text and "REDIS_PASSWORD" not in text
    assert not re.search(r"postgresql\+psycopg://[^\s]*@", text)
    conf = (ROOT / "deploy" / "redis.conf").read_text(encoding="utf-8")
    assert "aclfile /run/secrets/redis_users_acl" in conf


def test_flower_runs_only_behind_basic_auth_from_the_environment() -> None:
    services = compose_services()
    runs_flower = {name: block for name, block in services.items() if " flower" in block
                   or '"flower"' in block}  # fmt: skip
    assert runs_flower, "docker-compose.yml has no Flower service"
    for name, block in runs_flower.items():
        # credentials from a secret file read by flowerconfig.py, never on the command line
        assert "RETRY_PIPELINE_FLOWER_BASIC_AUTH_FILE: /run/secrets/flower_basic_auth" in block
        assert "--basic-auth" not in block, f"{name}: credentials on the command line"
        ports = re.findall(r"(\d+(?:\.\d+){3}:)?\d+:5555", block)
        assert all(p for p in ports), f"{name}: Flower published on every interface"
    assert "basic_auth = configure()" in (ROOT / "flowerconfig.py").read_text(encoding="utf-8")


@pytest.mark.parametrize(("given", "listens"), [(None, "127.0.0.1"), ("0.0.0.0", "0.0.0.0")])
def test_flower_listens_on_loopback_unless_told(
    tmp_path: Path, given: str | None, listens: str
) -> None:
    auth = tmp_path / "flower_auth"
    auth.write_text("ops:a-long-password\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "FLOWER_ADDRESS"}
    env["RETRY_PIPELINE_FLOWER_BASIC_AUTH_FILE"] = str(auth)
    if given is not None:
        env["FLOWER_ADDRESS"] = given
    shown = subprocess.run(
        [sys.executable, "-c", "import flowerconfig; print(flowerconfig.address)"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert shown.stdout.strip() == listens
    assert "FLOWER_ADDRESS: 0.0.0.0" in compose_services()["flower"]  # in its container only


def test_readme_documents_a_broker_url_with_a_password() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert re.search(r"redis://[A-Za-z]*:[A-Z_<>${}]+@", readme)
    assert "RETRY_PIPELINE_BROKER_URL_FILE" in readme


# --- a broker URL with a password -----------------------------------------------------------------


class PasswordRedis:
    def __init__(self, process: subprocess.Popen[bytes], port: int, password: str) -> None:
        self.process, self.port, self.password = process, port, password

    def url(self, password: str | None = None) -> str:
        return f"redis://:{password or self.password}@127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password)


@pytest.fixture
def password_redis(tmp_path: Path) -> Iterator[PasswordRedis]:
    binary = redis_binary()
    if binary is None:
        if IN_CI:
            pytest.fail("a redis-server is needed under CI")
        pytest.skip("no redis-server to start")
    port = free_port()
    password = f"pw-{uuid.uuid4().hex}"
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--requirepass", password,
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    server = PasswordRedis(process, port, password)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if server.client().ping():
                    break
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("redis-server with --requirepass did not start")
                time.sleep(0.05)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def queued_messages(r: redis.Redis, queue: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in r.lrange(queue, 0, -1)]


def test_broker_url_with_a_password_carries_a_report(password_redis: PasswordRedis) -> None:
    # Without the password the server refuses: the password below is really used.
    with pytest.raises(redis.AuthenticationError):
        no_retry = Retry(NoBackoff(), 0)  # redis-py would retry the refused handshake
        redis.Redis(host="127.0.0.1", port=password_redis.port, retry=no_retry).ping()
    queue = uid("rp-secure")
    application = uid("PW")
    task_id = client.report_missing(
        {
            "application": application,
            "office": OWN,
            "procedure": "continuous",
            "vehicle": "JA11-123456",
            "missing": ["safety"],
            "confirmed": [],
            "detected_at": DETECTED,
        },
        broker_url=password_redis.url(),
        queue=queue,
    )
    r = password_redis.client()
    deadline = time.monotonic() + 10
    while not queued_messages(r, queue):
        assert time.monotonic() < deadline, f"no message reached {queue}"
        time.sleep(0.05)
    (message,) = queued_messages(r, queue)
    assert message["content-type"] == "application/json"  # JSON only (DESIGN 9)
    assert message["headers"]["task"] == "retry_pipeline.report_missing"
    assert message["headers"]["id"] == task_id
    body = message["body"]
    if message["properties"].get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args, kwargs, _embed = json.loads(body)
    assert kwargs == {}
    assert args[0]["application"] == application
    assert args[0]["detected_at"] == DETECTED
    # The password travels in the URL only, never inside the message.
    assert password_redis.password not in json.dumps(message)


def test_broker_url_with_a_wrong_password_fails_loudly(password_redis: PasswordRedis) -> None:
    queue = uid("rp-secure")
    started = time.monotonic()
    with pytest.raises(OperationalError):
        client.report_missing(
            {"application": uid("PW")}, broker_url=password_redis.url("wrong"), queue=queue
        )
    assert time.monotonic() - started < 30
    assert password_redis.client().llen(queue) == 0
