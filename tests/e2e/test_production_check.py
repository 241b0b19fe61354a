"""Issue 13, done when: the README's production steps run as written (scripts/production-check.sh).

The script runs the README block between the ``production-steps`` markers against a
fresh database on this machine's PostgreSQL and a private redis-server started with
deploy/redis.conf and the ACL file the steps write; the examination side then sends a
signed report as its own Redis user and takes the signed outcome.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import DEFAULT_PG, IN_CI

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


def _require(what: str, ok: bool) -> None:
    if not ok:
        if IN_CI:
            pytest.fail(f"{what} is required under CI")
        pytest.skip(f"{what} is not available")


def test_readme_production_steps_run_verbatim() -> None:
    admin = os.environ.get("TEST_POSTGRES_URL", DEFAULT_PG)
    engine = create_engine(admin)
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        reachable = True
    except Exception:
        reachable = False
    finally:
        engine.dispose()
    _require(f"PostgreSQL at {admin}", reachable)
    server = shutil.which("redis-server", path="/usr/local/bin:/usr/bin:/bin")
    _require("redis-server 7+", server is not None)
    _require("openssl", shutil.which("openssl") is not None)
    env = dict(os.environ)
    cli = Path(str(server)).with_name("redis-cli")
    env.update(VENV_BIN=str(Path(sys.executable).parent), TEST_POSTGRES_URL=admin,
               REDIS_SERVER=str(server), REDIS_CLI=str(cli))  # fmt: skip
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "production-check.sh")],
        env=env, capture_output=True, text=True, timeout=400, check=False, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-6000:]
    assert "production-check: OK" in done.stderr
    assert "-> examination.auto_correct, confirmed" in done.stderr
