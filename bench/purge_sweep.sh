#!/usr/bin/env bash
# Cost of the erasure sweep: the time to erase DUE deleted accounts among TOTAL, and the time
# of a sweep with nothing due as the table grows.
#
#   bench/purge_sweep.sh [total] [due]        # defaults: 1000000 10000
#
# Needs MariaDB (127.0.0.1:3306, root) and Redis (127.0.0.1:6379). Fills the database
# `dtu_bench_purge` with synthetic accounts (SQL), runs one `dt-users beat` sweep at a time
# (batch = DUE) and reads the sweep's own timing from its log line.
set -euo pipefail
cd "$(dirname "$0")/.."
TOTAL="${1:-1000000}"
DUE="${2:-10000}"
DB=dtu_bench_purge
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/dt-users/target}"
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --locked -q
BIN="$CARGO_TARGET_DIR/release/dt-users"
KEYFILE=$(mktemp)
openssl genpkey -algorithm ed25519 -out "$KEYFILE" 2>/dev/null
cleanup() {
  mariadb -uroot -h127.0.0.1 -e "DROP DATABASE IF EXISTS $DB"
  redis-cli --scan --pattern 'dtu-bench-purge*' | xargs -r redis-cli del >/dev/null
  rm -f "$KEYFILE"
}
trap cleanup EXIT
mariadb -uroot -h127.0.0.1 -e "DROP DATABASE IF EXISTS $DB; CREATE DATABASE $DB CHARACTER SET utf8mb4"
export DT_USERS_DATABASE_URL="mysql://root@127.0.0.1:3306/$DB"
export DT_USERS_REDIS_URL="redis://127.0.0.1:6379"
export DT_USERS_REDIS_KEY_PREFIX="dtu-bench-purge"
export DT_USERS_SIGNING_KEYS_FILE="$KEYFILE"
export DT_USERS_MFA_ENCRYPTION_KEY="$(openssl rand -base64 32)"
export DT_USERS_PURGE_INTERVAL=3600
export DT_USERS_PURGE_BATCH="$DUE"
"$BIN" migrate >/dev/null

sql() { mariadb -uroot -h127.0.0.1 -N "$DB" -e "$1"; }

# Adds N accounts numbered from FROM, the first DUE_N of them deleted and past their grace
# period. Ids are sequential UUIDs (as UUIDv7 ids are, being time-ordered), rows come from
# MariaDB's sequence engine, 100,000 per statement.
add_accounts() {
  local from=$1 n=$2 due_n=$3
  local start=$from end=$((from + n - 1))
  while [ "$start" -le "$end" ]; do
    local stop=$((start + 99999 < end ? start + 99999 : end))
    sql "INSERT INTO users (id, email, email_lower, email_verified, username, username_lower,
                            display_name, bio, avatar_url, password_hash, status, created_at,
                            updated_at, deleted_at, purge_after)
         SELECT CONCAT('00000000-0000-7000-8000-', LPAD(HEX(seq), 12, '0')),
                CONCAT('u', seq, '@example.com'), CONCAT('u', seq, '@example.com'), 1,
                CONCAT('u', seq), CONCAT('u', seq), CONCAT('User ', seq), NULL, NULL, 'x',
                IF(seq < $from + $due_n, 'deleted', 'active'), 0, 0,
                IF(seq < $from + $due_n, 0, NULL), IF(seq < $from + $due_n, 1, NULL)
         FROM seq_${start}_to_${stop};"
    start=$((stop + 1))
  done
}

sweep() { # prints "purged elapsed_ms" of one sweep (the lease of the previous one is cleared)
  sql "DELETE FROM leases"
  local log
  log=$(mktemp)
  RUST_LOG=info "$BIN" beat >"$log" 2>&1 &
  local pid=$!
  until grep -q '"sweep done"' "$log"; do sleep 0.1; done
  kill "$pid"; wait "$pid" 2>/dev/null || true
  python3 -c "
import json,sys
for line in open('$log'):
    if 'sweep done' in line:
        d=json.loads(line); print(d['purged'], round(d['elapsed_ms'],1))" 
  rm -f "$log"
}

echo "table size | due | purged | sweep time (ms)"
size=0
for step in 10000 100000 "$TOTAL"; do
  [ "$step" -le "$TOTAL" ] || continue
  add=$((step - size))
  [ "$add" -gt 0 ] || continue
  add_accounts "$((size + 1))" "$add" 0
  size=$step
  sql "ANALYZE TABLE users" >/dev/null
  read -r purged ms < <(sweep)
  echo "$size | 0 | $purged | $ms"
done
add_accounts "$((size + 1))" "$DUE" "$DUE"
size=$((size + DUE))
sql "ANALYZE TABLE users" >/dev/null
read -r purged ms < <(sweep)
echo "$size | $DUE | $purged | $ms"
read -r purged ms < <(sweep)
echo "$((size - DUE)) | 0 | $purged | $ms"
