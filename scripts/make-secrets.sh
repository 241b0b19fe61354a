#!/usr/bin/env bash
# Create the secret files docker-compose.yml reads (and the production check uses), in
# ${1:-secrets}/ (mode 0700; never commit it). Passwords are random and only written to
# files; nothing secret is printed. Re-running keeps existing files.
#   scripts/make-secrets.sh [DIR]
# Files: postgres_password, database_url, registry_url, broker_url, redis_users.acl,
# examination_broker_url, flower_basic_auth, pipeline.key/.pem, examination.key/.pem,
# trusted/ (the certificates the pipeline accepts: its own and the examination side's).
set -euo pipefail
umask 077
dir=${1:-secrets}
redis_host=${REDIS_HOST:-redis}
redis_port=${REDIS_PORT:-6379}
pg_host=${POSTGRES_HOST:-postgres}
mkdir -p "$dir/trusted"
chmod 700 "$dir"

rand() { openssl rand -hex 24; }
keep() { [ -s "$dir/$1" ]; }
put() { printf '%s\n' "$2" >"$dir/$1"; }
hash() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }

keep postgres_password || put postgres_password "$(rand)"
pg_password=$(cat "$dir/postgres_password")
keep database_url || put database_url "postgresql+psycopg://retry:${pg_password}@${pg_host}:5432/retry"
# Kei-MOTAS (read only, docs/registry.md). Replace with the Kei-MOTAS database's URL;
# until then the pipeline's own database (with no certificates) is read.
keep registry_url || cp "$dir/database_url" "$dir/registry_url"

for user in pipeline examination; do
  keep "redis_${user}_password" || put "redis_${user}_password" "$(rand)"
done
pipeline_pw=$(cat "$dir/redis_pipeline_password")
examination_pw=$(cat "$dir/redis_examination_password")
keep broker_url || put broker_url "redis://pipeline:${pipeline_pw}@${redis_host}:${redis_port}/0"
keep examination_broker_url ||
  put examination_broker_url "redis://examination:${examination_pw}@${redis_host}:${redis_port}/0"
# The ACL file holds only SHA-256 hashes of the passwords (deploy/redis-acl.md).
sed -e "s/@PIPELINE_HASH@/$(hash "$pipeline_pw")/" \
    -e "s/@EXAMINATION_HASH@/$(hash "$examination_pw")/" \
    "$(dirname "$0")/../deploy/users.acl.template" | grep -v -e '^#' -e '^$' >"$dir/redis_users.acl"

keep flower_basic_auth || put flower_basic_auth "ops:$(rand)"
keep web_secret || put web_secret "$(openssl rand -hex 32)"  # signs the console's cookie

for name in pipeline examination; do
  if ! keep "$name.key"; then
    openssl req -x509 -newkey rsa:3072 -nodes -sha256 -days 825 \
      -subj "/O=retry_pipeline/CN=$name" \
      -keyout "$dir/$name.key" -out "$dir/$name.pem" 2>/dev/null
  fi
  cp "$dir/$name.pem" "$dir/trusted/$name.pem"
done
# The folder is 0700 (no other host user reaches the files). The files themselves are
# 0644: compose mounts file secrets as they are, and the containers' users (pipeline,
# redis, postgres) are not the owner on the host.
chmod 700 "$dir" "$dir/trusted"
find "$dir" -type f -exec chmod 644 {} +
echo "secrets in $dir/ (give examination.key, examination.pem, pipeline.pem and examination_broker_url to the examination side)" >&2
