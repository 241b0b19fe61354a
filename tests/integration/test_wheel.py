"""The built wheel is the pipeline only, and migrates a database from outside the checkout.

The wheel is built offline from a copy of the checkout (``pip wheel --no-deps
--no-build-isolation``: setuptools and wheel come with the test extras), installed
with ``pip install --target`` and run with ``python -S`` so that neither the
editable install nor the simulation's ``.pth`` file is on its path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from retry_pipeline.adapters.orm import Base

ROOT = Path(__file__).resolve().parents[2]
SKIP = shutil.ignore_patterns(
    ".venv", ".git", "__pycache__", "build", "dist", "*.egg-info", "var", "*.sqlite3*",
    ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis", "node_modules",
)  # fmt: skip
MIGRATIONS = {
    "retry_pipeline/migrations/env.py",
    "retry_pipeline/migrations/script.py.mako",
    "retry_pipeline/migrations/versions/0001_initial.py",
    "retry_pipeline/migrations/versions/0002_dead_letters.py",
    "retry_pipeline/migrations/versions/0003_outbox_confirmation.py",
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("wheel")
    source = base / "src"
    shutil.copytree(ROOT, source, ignore=SKIP)
    assert (source / "simulation" / "harness.py").exists()  # the copy has it; the wheel must not
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "--wheel-dir", str(base / "out"), str(source)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (built,) = (base / "out").glob("retry_pipeline-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("target")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target",
         str(target), str(wheel)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return target


def test_wheel_holds_no_process_harness_and_carries_the_migrations(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        offenders = {
            name: word
            for name in names
            for word in (b"subprocess.Popen", b"redis-server")
            if word in zf.read(name)
        }
    assert offenders == {}
    assert names >= MIGRATIONS
    assert not [n for n in names if n.startswith(("simulation/", "tests/", "bench/"))]
    assert not [n for n in names if "/sim/" in n]


def _run_installed(
    target: Path, cwd: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """``retry-pipeline ARGS`` from the installed wheel, dependencies from this venv."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RETRY_PIPELINE_")}
    clean["PYTHONPATH"] = os.pathsep.join([str(target), sysconfig.get_paths()["purelib"]])
    code = (
        "import sys, retry_pipeline; from retry_pipeline.cli import main; "
        "assert retry_pipeline.__file__.startswith(sys.argv[1]), retry_pipeline.__file__; "
        "sys.argv = ['retry-pipeline', *sys.argv[2:]]; main()"
    )
    return subprocess.run(
        [sys.executable, "-S", "-c", code, str(target), *args],
        cwd=cwd, env={**clean, **env}, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_installed_wheel_migrates_a_fresh_sqlite_file(installed: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    done = _run_installed(installed, tmp_path, "db", "upgrade", RETRY_PIPELINE_DATABASE_URL=url)
    assert done.returncode == 0, done.stderr[-3000:]
    engine = create_engine(url)
    try:
        names = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert names == set(Base.metadata.tables) | {"alembic_version"}


@pytest.mark.parametrize(
    "args",
    [
        ["simulate", "scenario.json"],
        ["fault-matrix", "scenario.json"],
        ["scenario", "post-holiday"],
        ["demo"],
    ],
)
def test_simulation_commands_from_the_wheel_exit_2_with_one_line(
    installed: Path, tmp_path: Path, args: list[str]
) -> None:
    done = _run_installed(installed, tmp_path, *args)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and "simulation is not installed" in done.stderr
