"""An authenticated broker (issue 13): only messages signed by a known key are taken.

A real worker (its own process, a private redis-server, a migrated SQLite file) runs
with the pipeline's key and a certificate store holding the pipeline's and the
examination side's certificates. Three reports are sent: one signed as the
examination side, one unsigned JSON, one signed with a foreign key. Only the first
becomes a chain; the other two are dead letters. Each signed sender is its own
process (Celery registers one signing key per process).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import create_engine, text

from retry_pipeline.adapters.migrate import upgrade
from retry_pipeline.names import REPORT_MISSING as REPORT_TASK
from retry_pipeline.signing import UNSIGNED_WARNING, create_keypair
from simulation.redis_server import PrivateRedis
from tests.conftest import create_registry_standin_at
from tests.support import (
    Started,
    celery_command,
    pipeline_env,
    private_redis_server,
    start_celery_worker,
    stop_process,
    wait_for,
)

DEADLINE_S = 45.0

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def private_redis() -> Iterator[PrivateRedis]:
    yield from private_redis_server()  # a server of this module's own (tests/support.py)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Key pairs of the pipeline, the examination side and a stranger."""
    base = tmp_path_factory.mktemp("keys")
    return {name: create_keypair(base / name, name) for name in ("pipeline", "examination", "x")}


def impostor(genuine_cert: Path, directory: Path) -> tuple[Path, Path]:
    """A new key with a certificate that copies the genuine one's issuer and serial number."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    genuine = x509.load_pem_x509_certificate(genuine_cert.read_bytes())
    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    cert = (
        x509.CertificateBuilder()
        .subject_name(genuine.subject)
        .issuer_name(genuine.issuer)
        .public_key(key.public_key())
        .serial_number(genuine.serial_number)
        .not_valid_before(genuine.not_valid_before_utc)
        .not_valid_after(genuine.not_valid_after_utc)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = directory / "impostor.key", directory / "impostor.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@pytest.fixture(scope="module")
def cert_store(
    keys: dict[str, tuple[Path, Path]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """What the pipeline trusts: its own certificate and the examination side's."""
    store = tmp_path_factory.mktemp("trusted")
    for name in ("pipeline", "examination"):
        shutil.copy(keys[name][1], store / f"{name}.pem")
    return store


def base_env(broker_url: str, db_url: str, queue: str) -> dict[str, str]:
    return pipeline_env(
        database_url=db_url,
        broker_url=broker_url,
        queue=queue,
        examination_queue=f"{queue}-examination",
    )


def start_worker(env: dict[str, str], log: Path) -> Started:
    return start_celery_worker(
        env["RETRY_PIPELINE_QUEUE"],
        f"{uuid.uuid4().hex[:6]}@%h",
        env,
        log,
        cwd=log.parent,
        ready_within_s=DEADLINE_S,
    )


def report(application: str) -> dict[str, Any]:
    return {
        "application": application,
        "office": "KEI-OSAKA",
        "procedure": "continuous",
        "vehicle": f"JA11-{uuid.uuid4().hex[:6]}",
        "missing": ["safety"],
        "confirmed": [],
        "detected_at": datetime.now(UTC).isoformat(),
    }


SEND = """
import json, sys
from retry_pipeline.client import report_missing
report_missing(json.loads(sys.argv[1]), queue=sys.argv[2])
"""


def send_signed(
    env: dict[str, str], body: dict[str, Any], key: Path, cert: Path, store: Path
) -> None:
    """The examination side's process (or a stranger's): retry_pipeline.client, signing."""
    import json

    sender = dict(env)
    sender.update(
        RETRY_PIPELINE_SECURITY_KEY=str(key),
        RETRY_PIPELINE_SECURITY_CERTIFICATE=str(cert),
        RETRY_PIPELINE_SECURITY_CERT_STORE=str(store),
    )
    done = subprocess.run(
        [sys.executable, "-c", SEND, json.dumps(body), env["RETRY_PIPELINE_QUEUE"]],
        env=sender, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def send_unsigned(broker_url: str, queue: str, body: dict[str, Any]) -> None:
    app = Celery("unsigned", broker=broker_url, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"])
    try:
        app.send_task(REPORT_TASK, args=[body], queue=queue)
    finally:
        app.close()


def query(db_url: str, sql: str) -> list[Any]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql)).all())
    finally:
        engine.dispose()


def test_only_reports_signed_by_a_known_key_are_taken(
    private_redis: PrivateRedis,
    keys: dict[str, tuple[Path, Path]],
    cert_store: Path,
    tmp_path: Path,
) -> None:
    db_url = f"sqlite:///{tmp_path / 'retry.sqlite3'}"
    upgrade(db_url)
    create_registry_standin_at(db_url)
    queue = f"signed-{uuid.uuid4().hex[:8]}"
    env = base_env(private_redis.url, db_url, queue)
    worker_env = dict(env)
    worker_env.update(
        RETRY_PIPELINE_SECURITY_KEY=str(keys["pipeline"][0]),
        RETRY_PIPELINE_SECURITY_CERTIFICATE=str(keys["pipeline"][1]),
        RETRY_PIPELINE_SECURITY_CERT_STORE=str(cert_store),
    )
    log = tmp_path / "worker.log"
    worker = start_worker(worker_env, log)
    try:
        assert UNSIGNED_WARNING not in log.read_text(errors="replace")
        signed, unsigned, foreign, forged = (f"OSS-2026-{n}{uuid.uuid4().hex[:5]}" for n in "SUFX")
        # The stranger verifies with the same store, but signs with its own key.
        exam_key, exam_cert = keys["examination"]
        send_signed(env, report(signed), exam_key, exam_cert, cert_store)
        send_unsigned(private_redis.url, queue, report(unsigned))
        send_signed(env, report(foreign), keys["x"][0], keys["x"][1], cert_store)
        # Another key claiming to be the examination side (its certificate's id copied).
        fake_key, fake_cert = impostor(exam_cert, tmp_path / "impostor")
        send_signed(env, report(forged), fake_key, fake_cert, cert_store)

        def settled() -> bool:
            chains = query(db_url, "SELECT application FROM retry_chain")
            letters = query(db_url, "SELECT reason FROM dead_letter")
            return bool(chains) and len(letters) >= 3

        wait_for(settled, DEADLINE_S, "one chain and three dead letters", worker)
        chains = [r[0] for r in query(db_url, "SELECT application FROM retry_chain")]
        assert chains == [signed]
        letters = [r[0] for r in query(db_url, "SELECT reason FROM dead_letter ORDER BY id")]
        assert len(letters) == 3, letters
        assert any("ContentDisallowed" in r or "untrusted" in r for r in letters), letters
        assert any("Unknown certificate" in r for r in letters), letters
        # The forged signature fails verification. Celery 5.x words it oddly: its
        # reraise_errors catches a module instead of InvalidSignature, so the reason is
        # "Unable to deserialize: TypeError(...)" rather than "Bad signature"; the body
        # is never decoded either way.
        assert sum("Unknown certificate" in r for r in letters) == 1, letters
        forged_letters = [
            r for r in letters
            if "Unknown certificate" not in r
            and ("Bad signature" in r or "Unable to deserialize" in r)
        ]  # fmt: skip
        assert len(forged_letters) == 1, letters
        history = query(db_url, "SELECT application FROM retry_history")
        assert {r[0] for r in history} == {signed}
        assert worker.process.poll() is None  # the worker goes on
        # compose's worker healthcheck works with signing on (control messages signed too)
        ping = subprocess.run(
            celery_command("inspect", "ping", "--timeout", "10"),
            env=worker_env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert ping.returncode == 0, ping.stdout + ping.stderr
        assert "pong" in ping.stdout
    finally:
        stop_process(worker)


def test_without_keys_the_worker_warns_and_takes_unsigned_json(
    private_redis: PrivateRedis, tmp_path: Path
) -> None:
    db_url = f"sqlite:///{tmp_path / 'retry.sqlite3'}"
    upgrade(db_url)
    create_registry_standin_at(db_url)
    queue = f"unsigned-{uuid.uuid4().hex[:8]}"
    env = base_env(private_redis.url, db_url, queue)
    log = tmp_path / "worker.log"
    worker = start_worker(env, log)
    try:
        wait_for(lambda: UNSIGNED_WARNING in worker.output(), DEADLINE_S, "the warning", worker)
        application = f"OSS-2026-J{uuid.uuid4().hex[:5]}"
        send_unsigned(private_redis.url, queue, report(application))
        wait_for(
            lambda: query(db_url, "SELECT application FROM retry_chain"),
            DEADLINE_S,
            "a chain",
            worker,
        )
        assert [r[0] for r in query(db_url, "SELECT application FROM retry_chain")] == [application]
    finally:
        stop_process(worker)
