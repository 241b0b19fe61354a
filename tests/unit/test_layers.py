"""The house's floors (issue 8): no import runs from a lower floor to a higher one.

Each module of the package sits on one floor; a module may import its own floor and
the ones below. The pure core imports no infrastructure library at all.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "retry_pipeline"

# Lowest first. A module not listed here fails the test: give every new module a floor.
FLOORS: list[tuple[str, ...]] = [
    ("errors", "names", "logs", "redact"),
    ("config",),
    ("model",),
    ("clock", "calendar"),
    ("policy", "rules"),
    ("attempts", "intake", "messages", "wording"),
    ("ports",),
    ("service", "views"),
    ("adapters", "migrations", "schedules", "client", "signing"),
    ("bootstrap",),
    ("worker", "tasks", "heartbeat", "flower_readonly", "report_buffer"),
    ("cli", "web", "ops"),
]
PURE = ("model", "policy", "rules", "attempts", "intake", "calendar", "clock", "errors", "names")
INFRASTRUCTURE = ("celery", "kombu", "sqlalchemy", "redis", "alembic", "psycopg")


def floor_of(module: str) -> int:
    """The floor of ``retry_pipeline.<module>`` (its first component decides)."""
    top = module.split(".")[0]
    if top.startswith("cli_"):
        top = "cli"  # the command line's modules (cli_calendar.py, ...)
    for index, names in enumerate(FLOORS):
        if top in names:
            return index
    raise AssertionError(f"retry_pipeline.{module} has no floor in tests/unit/test_layers.py")


def package_modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        if parts:
            out.append((".".join(parts), path))
    return out


def imports_of(path: Path) -> list[str]:
    """Every module name ``path`` imports (top level and inside functions)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            if node.module == "retry_pipeline":
                names += [f"retry_pipeline.{alias.name}" for alias in node.names]
    return names


MODULES = package_modules()


@pytest.mark.parametrize(("module", "path"), MODULES, ids=[m for m, _ in MODULES])
def test_no_import_from_a_higher_floor(module: str, path: Path) -> None:
    mine = floor_of(module)
    for name in imports_of(path):
        if name.startswith("retry_pipeline.") and name != "retry_pipeline":
            theirs = floor_of(name.removeprefix("retry_pipeline."))
            assert theirs <= mine, f"{module} (floor {mine}) imports {name} (floor {theirs})"


@pytest.mark.parametrize("module", PURE)
def test_the_core_imports_no_infrastructure(module: str) -> None:
    path = PACKAGE / f"{module}.py"
    for name in imports_of(path):
        assert name.split(".")[0] not in INFRASTRUCTURE, f"{module} imports {name}"


@pytest.mark.parametrize(("module", "path"), MODULES, ids=[m for m, _ in MODULES])
def test_no_module_over_400_lines(module: str, path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= 400, f"{module} has {lines} lines"


def test_the_floor_check_catches_an_upward_import(tmp_path: Path) -> None:
    # The check itself can fail: a model that imports the service is refused.
    bad = tmp_path / "model.py"
    bad.write_text("from retry_pipeline.service.pipeline import Pipeline\n")
    (name,) = imports_of(bad)
    assert floor_of(name.removeprefix("retry_pipeline.")) > floor_of("model")
