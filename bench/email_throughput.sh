#!/usr/bin/env bash
# Emails per second that one `dt-users worker` (default concurrency) delivers to a local SMTP
# server, from a queue filled beforehand.
#
#   bench/email_throughput.sh [emails]
#
# Needs MariaDB (127.0.0.1:3306, root) and Redis (127.0.0.1:6379), python3 with aiosmtpd.
# The SMTP server only counts what it accepts; it runs on the same two cores as the worker,
# so the figure is a floor for a deployment with a real mail relay.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-2000}"
DB=dtu_bench_mail
NS="dtu-bench-mail:$$"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/dt-users/target}"
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --locked -q
BIN="$CARGO_TARGET_DIR/release/dt-users"

SINK_DIR=$(mktemp -d)
SMTP_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
KEYFILE=$(mktemp)
openssl genpkey -algorithm ed25519 -out "$KEYFILE" 2>/dev/null
cleanup() {
  kill "${SINK:-}" "${WORKER:-}" "${RELAY:-}" 2>/dev/null || true
  wait 2>/dev/null || true
  mariadb -uroot -h127.0.0.1 -e "DROP DATABASE IF EXISTS $DB"
  redis-cli --scan --pattern "$NS*" | xargs -r redis-cli del >/dev/null
  rm -rf "$SINK_DIR" "$KEYFILE"
}
trap cleanup EXIT

SINK_COUNT_ONLY=1 python3 crates/dt-users/tests/support/smtp_sink.py "$SMTP_PORT" "$SINK_DIR" >/dev/null &
SINK=$!
mariadb -uroot -h127.0.0.1 -e "DROP DATABASE IF EXISTS $DB; CREATE DATABASE $DB CHARACTER SET utf8mb4"
export DT_USERS_DATABASE_URL="mysql://root@127.0.0.1:3306/$DB"
export DT_USERS_JOBS_URL="redis://127.0.0.1:6379"
export DT_USERS_JOBS_NAMESPACE="$NS"
export DT_USERS_SMTP_URL="smtp://127.0.0.1:$SMTP_PORT"
export DT_USERS_SIGNING_KEYS_FILE="$KEYFILE"
export DT_USERS_MFA_ENCRYPTION_KEY="$(openssl rand -base64 32)"
export RUST_LOG=warn
"$BIN" migrate

# N email intents (security notices, no token) straight into the outbox.
mariadb -uroot -h127.0.0.1 "$DB" -e "
SET SESSION max_recursive_iterations = 100000000;
INSERT INTO outbox (id, kind, name, user_id, payload, created_at, next_attempt_at)
WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < $N)
SELECT u.id, 'email', 'password_changed', u.uid,
       JSON_OBJECT('id', u.id, 'kind', 'password_changed', 'user_id', u.uid,
                   'to', CONCAT('user', n, '@example.com'), 'name', CONCAT('User ', n),
                   'params', JSON_OBJECT('changed_at', '2026-11-26T13:10:37Z')),
       0, 0
FROM (SELECT n, UUID() AS id, UUID() AS uid FROM seq) AS u;"

"$BIN" relay & RELAY=$!
until [ "$(mariadb -uroot -h127.0.0.1 -N "$DB" -e 'SELECT COUNT(*) FROM outbox WHERE dispatched_at IS NULL')" = 0 ]; do sleep 0.2; done
kill "$RELAY"; wait "$RELAY" 2>/dev/null || true; RELAY=
echo "queued $N email jobs"

START=$(date +%s.%N)
"$BIN" worker & WORKER=$!
while [ "$(cat "$SINK_DIR/count" 2>/dev/null || echo 0)" -lt "$N" ]; do sleep 0.05; done
END=$(date +%s.%N)
python3 -c "d=$END-$START; print(f'{$N} emails in {d:.2f} s: {$N/d:.0f} emails/s (one worker, concurrency ' + '${DT_USERS_WORKER_CONCURRENCY:-16}' + ')')"
