"""The office console in real Chromium (Playwright driving Debian's ``chromium``).

A real ``retry-pipeline web`` process on a free port, over a database seeded by the real
service, users created with the real ``retry-pipeline user add``: two offices log in and
each sees only its own applications, a parked application reads as parked, an operator
replays a dead letter. Screenshots go to ``var/``. Without a browser the test skips
outside CI and fails under CI (``.ci/run`` installs ``chromium``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from retry_pipeline.adapters.migrate import upgrade
from retry_pipeline.clock import FileClock
from simulation.redis_server import free_port
from tests.conftest import create_registry_standin_at
from tests.support import pipeline_env, start_process, stop_process, wait_for
from tests.web_seed import END, seed

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
VAR = ROOT / "var"
CLI = str(Path(sys.executable).with_name("retry-pipeline"))
PASSWORD = "browser-test-password"
IN_CI = bool(os.environ.get("CI"))
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture
def browser_path() -> str:
    path = chromium_path()
    if path is None:
        if IN_CI:
            pytest.fail("the browser test needs chromium under CI (apt-get install chromium)")
        pytest.skip("no chromium on this machine")
    return path


@pytest.fixture
def server(tmp_path: Path, broker_url: str) -> Iterator[tuple[str, Path]]:
    """A seeded database, three users and a real console process; (base URL, its log)."""
    db_url = f"sqlite:///{tmp_path / 'console.sqlite3'}"
    upgrade(db_url)
    create_registry_standin_at(db_url)  # Kei-MOTAS is external: the test stands in for it
    seed(db_url)
    clock_file = tmp_path / "clock.json"
    FileClock.write(clock_file, END, 1.0)  # the seeded Friday afternoon, in real time
    env = pipeline_env(
        pythonpath=False,
        database_url=db_url,
        clock_file=str(clock_file),
        broker_url=broker_url,
        web_secret="browser-test-secret-" + "x" * 20,
        log_format="json",
    )
    for user, office, extra in [
        ("osaka", "KEI-OSAKA", []),
        ("kobe", "KEI-KOBE", []),
        ("ops", "HQ", ["--operator"]),
    ]:
        subprocess.run(
            [CLI, "user", "add", user, "--office", office, *extra, "--password-stdin"],
            input=PASSWORD + "\n",
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    web = start_process(
        [CLI, "web", "--host", "127.0.0.1", "--port", str(port)], env, tmp_path / "web.log"
    )
    try:
        wait_for(
            lambda: _answers(base + "/metrics"),
            START_TIMEOUT_S,
            "the console to start",
            web,
            interval_s=0.2,
        )
        yield base, web.log
    finally:
        stop_process(web, STOP_TIMEOUT_S)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def test_two_offices_and_an_operator_in_chromium(
    server: tuple[str, Path], browser_path: str
) -> None:
    from playwright.sync_api import expect, sync_playwright

    base, log_path = server
    VAR.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        try:
            pages = {}
            for user in ("osaka", "kobe", "ops"):
                context = browser.new_context(
                    base_url=base, locale="ja-JP", viewport={"width": 1280, "height": 900}
                )
                page = context.new_page()
                page.goto("/")
                expect(page).to_have_url(f"{base}/login")
                page.fill("input[name=username]", user)
                page.fill("input[name=password]", PASSWORD)
                page.click("button[type=submit]")
                expect(page).to_have_url(f"{base}/")
                pages[user] = page

            osaka, kobe, ops = pages["osaka"], pages["kobe"], pages["ops"]
            live = osaka.locator("#live tbody tr")
            expect(live).to_have_count(2)
            assert sorted(live.evaluate_all("rs => rs.map(r => r.dataset.application)")) == [
                "OSAKA-LIVE",
                "OSAKA-PARKED",
            ]
            parked = osaka.locator('tr[data-application="OSAKA-PARKED"]')
            expect(parked).to_have_class("parked")
            expect(parked).to_contain_text("受付終了のため停止中（翌業務日 08:30 に1回確認）")
            expect(osaka.locator("#decided")).to_contain_text("再審査へ")
            expect(osaka.locator("body")).not_to_contain_text("KOBE-LIVE")
            osaka.screenshot(path=str(VAR / "console-office.png"), full_page=True)

            expect(kobe.locator("#live tbody tr")).to_have_count(1)
            expect(kobe.locator("#live")).to_contain_text("KOBE-LIVE")
            expect(kobe.locator("body")).not_to_contain_text("OSAKA")
            kobe.screenshot(path=str(VAR / "console-office-kobe.png"), full_page=True)
            response = kobe.goto("/applications/OSAKA-LIVE")
            assert response is not None and response.status == 404
            expect(kobe.locator("body")).not_to_contain_text("VIN-OSAKA")
            response = kobe.goto("/operator/dead-letters")
            assert response is not None and response.status == 403

            ops.goto("/operator/dead-letters")
            row = ops.locator("#dead-letters tr", has_text="OSAKA-REPLAY")
            expect(row).to_have_count(1)
            row.get_by_role("button", name="再投入").click()
            expect(ops.locator("p.msg.ok")).to_contain_text("再投入済み")
            expect(ops.locator("#resolved")).to_contain_text("再投入済み")
            ops.screenshot(path=str(VAR / "console-dead-letters.png"), full_page=True)

            osaka.reload()
            expect(osaka.locator('tr[data-application="OSAKA-REPLAY"]')).to_have_count(1)
            osaka.click('a[href="/applications/OSAKA-PARKED"]')
            expect(osaka.locator("ol.timeline")).to_contain_text("エラー検知")
            osaka.screenshot(path=str(VAR / "console-application.png"), full_page=True)
        finally:
            browser.close()

    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert any(r.get("application") == "OSAKA-REPLAY" and r.get("chain_id") for r in records)
