"""The compose stack an operator can trust (issue 13), checked without Docker.

`docker compose config` cannot run here; these tests parse docker-compose.yml with
PyYAML and check its invariants: no secret on a command line or in the environment,
secrets as files, pinned image tags, healthchecks, volumes, PostgreSQL timeouts,
Redis persistence and ACL, and the image built from the lock file.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from retry_pipeline.config import PREFIX, SECRETS, Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
PIPELINE_SERVICES = {"migrate", "worker", "beat", "flower"}
SECRET_WORDS = re.compile(r"pass(word)?|secret|requirepass|basic.auth|token", re.IGNORECASE)
CREDENTIALS_IN_URL = re.compile(r"://[^/\s:@]*:[^/\s@]+@")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def words(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value]
    raise AssertionError(f"unexpected {value!r}")


def test_the_stack_has_its_services(services: dict[str, dict[str, Any]]) -> None:
    assert {"redis", "postgres", *PIPELINE_SERVICES} <= set(services)


def test_no_secret_on_any_command_line_or_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        lines = words(svc.get("command")) + words(svc.get("entrypoint"))
        lines += words((svc.get("healthcheck") or {}).get("test"))
        for part in lines:
            assert "${" not in part, (name, part)  # no interpolated value on argv
            assert not CREDENTIALS_IN_URL.search(part), (name, part)
            assert not re.search(r"requirepass|basic-auth|--password", part), (name, part)
        joined = " ".join(lines)
        if "--pass" in joined:  # only the PING-only Redis user, which has no password
            assert "--user healthcheck --pass -" in joined, (name, joined)


def test_environment_holds_no_secret_values(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        env = svc.get("environment") or {}
        assert isinstance(env, dict), f"{name}: environment as a mapping"
        for key, value in env.items():
            text = str(value)
            assert not CREDENTIALS_IN_URL.search(text), (name, key)
            if SECRET_WORDS.search(key):
                assert key.endswith("_FILE") and text.startswith("/run/secrets/"), (name, key)
            for secret in SECRETS:
                assert key != PREFIX + secret, f"{name}: {key} must be {key}_FILE"


def test_pipeline_services_read_secrets_from_files(services: dict[str, dict[str, Any]]) -> None:
    for name in PIPELINE_SERVICES:
        env = services[name]["environment"]
        mounted = {f"/run/secrets/{s}" for s in services[name]["secrets"]}
        for key, value in env.items():
            if key.endswith("_FILE") or key == f"{PREFIX}SECURITY_KEY":
                assert value in mounted, (name, key, value)
        assert env[f"{PREFIX}DATABASE_URL_FILE"] == "/run/secrets/database_url"
        assert env[f"{PREFIX}BROKER_URL_FILE"] == "/run/secrets/broker_url"
        # signing on (docs/security.md): all three set
        assert {f"{PREFIX}SECURITY_{n}" for n in ("KEY", "CERTIFICATE", "CERT_STORE")} <= set(env)


def test_settings_accept_the_compose_environment(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """Every RETRY_PIPELINE_* variable compose sets is one the settings know."""
    for name in PIPELINE_SERVICES:
        env = {}
        for key, value in services[name]["environment"].items():
            if key.endswith("_FILE"):
                target = tmp_path / key
                target.write_text("postgresql+psycopg://retry@postgres/retry\n")
                value = str(target)
            env[key] = re.sub(r"\$\{[^:}]+:-([^}]*)\}", r"\1", str(value))
        for key in (f"{PREFIX}SECURITY_KEY", f"{PREFIX}SECURITY_CERTIFICATE"):
            env.pop(key, None)
        env.pop(f"{PREFIX}SECURITY_CERT_STORE", None)
        Settings.from_env(env)


def test_every_image_tag_is_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        image = svc["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest", (name, image)
        assert re.match(r"^\d+\.\d+(\.\d+)?", tag), (name, image)  # a version, not a series
    base = re.search(r"^FROM (\S+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert base is not None
    assert re.search(r":\d+\.\d+\.\d+-", base.group(1)), base.group(1)


def test_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    for name in ("redis", "postgres", "worker", "beat", "flower"):
        assert services[name].get("healthcheck", {}).get("test"), name
    assert "inspect ping" in " ".join(words(services["worker"]["healthcheck"]["test"]))
    beat = words(services["beat"]["healthcheck"]["test"])
    assert beat[1:3] == ["retry-pipeline", "health"]


def test_volumes_for_postgres_and_the_redis_aof(compose: dict[str, Any]) -> None:
    services = compose["services"]
    declared = set(compose["volumes"])
    assert any(v.split(":")[1] == "/data" for v in services["redis"]["volumes"])
    assert any(
        v.split(":")[1] == "/var/lib/postgresql/data" for v in services["postgres"]["volumes"]
    )
    for svc in services.values():
        for volume in svc.get("volumes", []):
            assert volume.split(":")[0] in declared
    conf = (ROOT / "deploy" / "redis.conf").read_text()
    assert re.search(r"^appendonly yes$", conf, re.MULTILINE)
    assert re.search(r"^appendfsync (everysec|always)$", conf, re.MULTILINE)
    assert re.search(r"^dir /data$", conf, re.MULTILINE)
    assert re.search(r"^aclfile /run/secrets/redis_users_acl$", conf, re.MULTILINE)
    assert "requirepass" not in conf


def test_postgres_timeouts(services: dict[str, dict[str, Any]]) -> None:
    command = " ".join(words(services["postgres"]["command"]))
    for setting in ("lock_timeout", "statement_timeout", "idle_in_transaction_session_timeout"):
        assert re.search(rf"-c {setting}=\d+", command), setting


def test_beat_schedule_in_a_folder_the_image_creates(services: dict[str, dict[str, Any]]) -> None:
    command = words(services["beat"]["command"])
    schedule = command[command.index("-s") + 1]
    assert schedule == "var/beat-schedule"
    assert "mkdir -p /app/var" in (ROOT / "Dockerfile").read_text()


def test_every_secret_and_config_file_is_written_by_make_secrets(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "make-secrets.sh"), str(tmp_path / "secrets")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for section in ("secrets", "configs"):
        for name, spec in compose[section].items():
            path = spec["file"]
            if path.startswith("./secrets/"):
                assert (tmp_path / path[2:]).is_file(), (section, name, path)
            else:
                assert (ROOT / path).is_file(), (section, name, path)
    for svc in compose["services"].values():
        for secret in svc.get("secrets", []):
            assert secret in compose["secrets"]
        for config in svc.get("configs", []):
            assert config["source"] in compose["configs"]
    acl = (tmp_path / "secrets" / "redis_users.acl").read_text()
    assert "user default off" in acl
    assert re.search(r"^user pipeline on #[0-9a-f]{64} ", acl, re.MULTILINE)
    assert re.search(r"^user examination on #[0-9a-f]{64} ", acl, re.MULTILINE)
    for password in ("redis_pipeline_password", "redis_examination_password"):
        assert (tmp_path / "secrets" / password).read_text().strip() not in acl  # hashes only
    printed = done.stdout + done.stderr
    for secret in ("postgres_password", "redis_pipeline_password", "flower_basic_auth"):
        value = (tmp_path / "secrets" / secret).read_text().strip().split(":")[-1]
        assert value and value not in printed  # nothing secret printed
    assert (tmp_path / "secrets").stat().st_mode & 0o077 == 0  # the folder is the owner's


def test_interpolated_variables_have_defaults_or_are_in_env_example() -> None:
    text = COMPOSE.read_text()
    example = {
        line.split("=", 1)[0]
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    }
    for match in re.finditer(r"\$\{([A-Z0-9_]+)(:?[-?][^}]*)?\}", text):
        name, rest = match.group(1), match.group(2) or ""
        assert rest.startswith(":-") or name in example, name
        assert not SECRET_WORDS.search(name), name
    assert not any(SECRET_WORDS.search(name) for name in example)


def test_image_installs_from_the_lock_file() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install --require-hashes -r requirements.lock" in dockerfile
    assert " -e " not in dockerfile
    lock = (ROOT / "requirements.lock").read_text()
    pinned = {m.group(1).lower() for m in re.finditer(r"^([A-Za-z0-9_.-]+)==", lock, re.MULTILINE)}
    for needed in ("celery", "kombu", "redis", "sqlalchemy", "alembic", "flower", "cryptography"):
        assert needed in pinned, needed
    assert "--hash=sha256:" in lock
    assert "file:///" not in lock and "/opt/" not in lock  # nothing of this machine


# -- what `docker compose config` checks, without Docker -----------------------------------

SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"  # compose-spec/compose-spec@170098b
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?)([-?])([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error} ($$ is a literal $)."""

    def one(match: re.Match[str]) -> str:
        name, colon, kind, arg = match.groups()
        value = env.get(name)
        unset = value is None or (colon == ":" and value == "")
        if kind == "?" and unset:
            raise AssertionError(f"compose would stop: {name}: {arg}")
        if kind == "-" and unset:
            return arg
        return value or ""

    return INTERPOLATION.sub(one, text.replace("$$", "\0")).replace("\0", "$")


def test_compose_file_is_valid_against_the_compose_spec_with_the_example_env() -> None:
    """The schema `docker compose config` validates against, after interpolating .env.example."""
    jsonschema = pytest.importorskip("jsonschema")
    example = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    data = yaml.safe_load(interpolate(COMPOSE.read_text(), example))
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator(schema).validate(data)  # raises with the first error's path


def test_the_spec_check_can_fail() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text())
    bad = {"services": {"worker": {"image": "x:1.0", "healthcheck": {"interval": 5}}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(bad)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate({"services": {"w": {"comand": ["a"]}}})
