#!/usr/bin/env bash
# The load benchmark in one command: builds the release binaries, prepares MariaDB + Redis,
# loads accounts, and measures in one run, on MariaDB + Redis and on the embedded default:
#   - the hash limit (verifications/s at the configured argon2id parameters, every core busy);
#   - the minimal-work ceiling of the authenticated read (bench/harness, MariaDB + Redis only)
#     and dt-users' `GET /api/v1/users/current` with the tokens of many users;
#   - sign-in (right passwords) and registration, with resident memory sampled every second;
#   - the read alone and during a sign-in storm (excess sign-ins shed with 503 `overloaded`),
#     of clients that wait the Retry-After (the storm) and of clients that do not (the flood);
#   - optionally the read and sign-in again with BIG accounts loaded, and a soak.
# Prints a table and writes JSON (bench/results/latest.json); bench/report.py draws the chart.
#
#   bench/run.sh                                   # about 8 minutes
#   SIGNIN=600 BIG=1000000 SOAK=600 bench/run.sh   # the run docs/performance.md reports
#
# Settings (environment): DURATION (s per read measurement, 15), ROUNDS (alternating rounds of
# the read and the ceiling, 3; each reported by its median), CONNECTIONS (64), USERS
# (accounts loaded, 10000), TOKENS (users whose tokens the read uses, 500), SIGNIN (s of the
# sign-in measurement, 30), REGISTER (s of the registration measurement, 15), STORM_CONNECTIONS
# (sign-in connections of the storm, 256), BIG (accounts for the repeat, 0 = skip), SOAK (s of
# the soak at half the read capacity with a trickle of sign-ins, 0 = skip), BACKENDS
# ("mariadb embedded"), PHASES (which of "read signin register storm" to run, all), OUT
# (bench/results/latest.json), DT_USERS_BIN (another dt-users build to measure) and
# SERVER_WRAPPER (a command the server is started through, e.g. `env LD_PRELOAD=…` to try
# another allocator).
# Needs MariaDB at 127.0.0.1:3306 (root, no password), Redis at 127.0.0.1:6379, wrk, python3,
# openssl; installs wrk with apt-get when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=${DURATION:-15}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-64}
USERS=${USERS:-10000}
TOKENS=${TOKENS:-500}
SIGNIN=${SIGNIN:-30}
REGISTER=${REGISTER:-15}
STORM_CONNECTIONS=${STORM_CONNECTIONS:-256}
BIG=${BIG:-0}
SOAK=${SOAK:-0}
BACKENDS=${BACKENDS:-mariadb embedded}
PHASES=${PHASES:-read signin register storm}
OUT=${OUT:-bench/results/latest.json}
PORT=18180
CEILING_PORT=18181
PASSWORD="benchmark passphrase"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/dt-users/target}"
export BENCH_WRK_DIR="$ROOT/bench/wrk"
export RUST_LOG=warn DT_USERS_LOG_FORMAT=json

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }

echo "==> release build"
cargo build --release --locked -q -p dt-users -p dt-users-bench
BIN="$CARGO_TARGET_DIR/release"
DT_USERS_BIN=${DT_USERS_BIN:-$BIN/dt-users}
SERVER_WRAPPER=${SERVER_WRAPPER:-}

WORK=$(mktemp -d /tmp/dtu-bench.XXXXXX)
# Kept after the run (also one that fails midway), for a look at what was measured.
RESULTS=$(mktemp -d /tmp/dtu-bench-results.XXXXXX)
PREFIX="dtu-bench-$$"
DB="dtu_bench_$$"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  mariadb -uroot -h127.0.0.1 -e "DROP DATABASE IF EXISTS $DB" 2>/dev/null || true
  redis-cli --scan --pattern "$PREFIX*" | xargs -r redis-cli del >/dev/null 2>&1 || true
  rm -rf "$WORK"
  echo "each measurement's results: $RESULTS"
}
trap cleanup EXIT

openssl genpkey -algorithm ed25519 -out "$WORK/key.pem" 2>/dev/null
openssl pkey -in "$WORK/key.pem" -pubout -out "$WORK/public.pem"
export DT_USERS_SIGNING_KEYS_FILE="$WORK/key.pem"
export DT_USERS_MFA_ENCRYPTION_KEY="$(openssl rand -base64 32)"
# The limiter stays on (its Redis or in-process step is part of every request) but never
# refuses: the load comes from one address.
for limit in LOGIN_IP LOGIN_IP_ACCOUNT LOGIN_ACCOUNT REGISTER_IP EMAIL_TARGET EMAIL_IP REFRESH GLOBAL_IP; do
  export "DT_USERS_RATE_LIMIT_$limit=1000000000/1000000000/1"
done

echo "==> hash limit"
"$BIN/hash-limit" 10 | tee "$RESULTS/hash_limit.json"

BASE="http://127.0.0.1:$PORT"
SERVER=""
SAMPLER=""

start_server() { # start_server NAME: dt-users serve with the backend's environment
  # shellcheck disable=SC2086 # the wrapper is words
  $SERVER_WRAPPER "$DT_USERS_BIN" serve --port "$PORT" >"$WORK/$1.log" 2>&1 &
  SERVER=$!
  PIDS+=("$SERVER")
  for _ in $(seq 300); do
    curl -sf "$BASE/health/live" >/dev/null 2>&1 && break
    kill -0 "$SERVER" 2>/dev/null || { cat "$WORK/$1.log"; return 1; }
    sleep 0.2
  done
  curl -sf "$BASE/health/live" >/dev/null
}

stop_server() {
  stop_sampler
  kill "$SERVER" 2>/dev/null || true
  wait "$SERVER" 2>/dev/null || true
}

start_sampler() { # start_sampler FILE: the server's resident memory (KiB) every second
  local file=$1 pid=$SERVER
  (while kill -0 "$pid" 2>/dev/null; do
     echo "$(date +%s.%N) $(ps -o rss= -p "$pid" | tr -d ' ')"
     sleep 1
   done) >"$file" &
  SAMPLER=$!
  PIDS+=("$SAMPLER")
}

stop_sampler() {
  [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null || true
  SAMPLER=""
}

rss() { ps -o rss= -p "$SERVER" | tr -d ' '; }

cpu_sample() { # cpu_sample PID...: the machine's total and idle jiffies, then each PID's
  local _cpu user nice system idle iowait irq softirq steal _rest
  read -r _cpu user nice system idle iowait irq softirq steal _rest </proc/stat
  echo "$((user + nice + system + idle + iowait + irq + softirq + steal)) $((idle + iowait))"
  for pid in "$@"; do awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0; done
}

# The process a measurement is aimed at (the service, or the ceiling while it is measured):
# each measurement records the share of the machine it, MariaDB and Redis used.
MEASURED=""

run_wrk() { # run_wrk NAME SCRIPT CONNECTIONS SECONDS URL [extra env...]: one measurement
  local name=$1 script=$2 connections=$3 seconds=$4 url=$5 pids before
  shift 5
  echo "--- $name: $connections connections, ${seconds}s"
  pids=("${MEASURED:-$SERVER}" "$(pgrep -o -x mariadbd || echo 0)" "$(pgrep -o -x redis-server || echo 0)")
  before=$(cpu_sample "${pids[@]}")
  env "$@" WRK_JSON="$RESULTS/$name.json" TOKENS="$WORK/tokens" USERS="$USERS" \
    PASSWORD="$PASSWORD" RUN_ID="$$" \
    wrk -t"$(( connections < 2 ? connections : 2 ))" -c"$connections" -d"${seconds}s" --timeout 10s -s "$BENCH_WRK_DIR/$script" "$url" \
    >"$WORK/$name.wrk" 2>&1 || { cat "$WORK/$name.wrk"; return 1; }
  python3 "$ROOT/bench/report.py" cpu "$before" "$(cpu_sample "${pids[@]}")" >"$RESULTS/$name-cpu.json"
  tail -1 "$WORK/$name.wrk"
}

note() { echo "$2" >"$RESULTS/$1.json"; }

# The speed of this machine's cores drifts (other tenants): each hashing measurement is
# compared with the hash limit measured right before and right after it.
hash_limit() { # hash_limit MEASUREMENT before|after
  "$BIN/hash-limit" 5 >"$RESULTS/hash-limit-$1-$2.json"
}

phase() { [[ " $PHASES " == *" $1 "* ]]; }

settle() { # settle mariadb|embedded: after a bulk load, until MariaDB has written it out
  [ "$1" = mariadb ] || return 0
  local dirty
  for _ in $(seq 120); do
    dirty=$(mariadb -uroot -h127.0.0.1 -N -e "SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_pages_dirty'" | cut -f2)
    [ "${dirty:-0}" -lt 100 ] && return 0
    sleep 1
  done
}

measure_backend() { # measure_backend mariadb|embedded
  local b=$1
  echo "==> $b: $USERS accounts"
  if [ "$b" = mariadb ]; then
    mariadb -uroot -h127.0.0.1 -e "DROP DATABASE IF EXISTS $DB; CREATE DATABASE $DB CHARACTER SET utf8mb4"
    export DT_USERS_DATABASE_URL="mysql://root@127.0.0.1:3306/$DB"
    export DT_USERS_REDIS_URL="redis://127.0.0.1:6379"
    export DT_USERS_REDIS_KEY_PREFIX="$PREFIX"
    export DT_USERS_JOBS_URL="redis://127.0.0.1:6379"
    export DT_USERS_JOBS_NAMESPACE="$PREFIX-jobs"
    local url=$DT_USERS_DATABASE_URL
  else
    unset DT_USERS_DATABASE_URL DT_USERS_REDIS_URL DT_USERS_REDIS_KEY_PREFIX DT_USERS_JOBS_URL DT_USERS_JOBS_NAMESPACE
    export DT_USERS_DATA_DIR="$WORK/embedded"
    mkdir -p "$DT_USERS_DATA_DIR"
    local url="sqlite://$DT_USERS_DATA_DIR/dt-users.db"
  fi
  "$DT_USERS_BIN" migrate >/dev/null
  "$BIN/load-users" "$url" 0 "$USERS" "$PASSWORD" >"$RESULTS/$b-load.json"

  start_server "$b"
  sleep 2
  note "$b-rss-idle" "{\"rss_kib\":$(rss)}"
  python3 "$ROOT/bench/report.py" tokens "$BASE" "$USERS" "$TOKENS" "$PASSWORD" "$WORK/tokens"

  # The read, and on MariaDB + Redis the ceiling, in alternating rounds (neither profits
  # from the order); each is reported by its median round.
  if phase read; then
    local ceiling="" round
    if [ "$b" = mariadb ]; then
      CEILING_PORT=$CEILING_PORT CEILING_DATABASE_URL="$DT_USERS_DATABASE_URL" \
        CEILING_REDIS_URL="$DT_USERS_REDIS_URL" CEILING_REDIS_KEY_PREFIX="$PREFIX" \
        CEILING_PUBLIC_KEY_FILE="$WORK/public.pem" "$BIN/ceiling" >"$WORK/ceiling.log" 2>&1 &
      ceiling=$!
      PIDS+=("$ceiling")
      for _ in $(seq 100); do curl -s "http://127.0.0.1:$CEILING_PORT/" >/dev/null 2>&1 && break; sleep 0.1; done
    fi
    for round in $(seq "$ROUNDS"); do
      run_wrk "$b-read-r$round" read.lua "$CONNECTIONS" "$DURATION" "$BASE"
      if [ -n "$ceiling" ]; then
        MEASURED=$ceiling
        run_wrk "ceiling-read-r$round" read.lua "$CONNECTIONS" "$DURATION" "http://127.0.0.1:$CEILING_PORT"
        MEASURED=""
      fi
    done
    python3 "$ROOT/bench/report.py" median "$RESULTS" "$b-read"
    if [ -n "$ceiling" ]; then
      kill "$ceiling"; wait "$ceiling" 2>/dev/null || true
      python3 "$ROOT/bench/report.py" median "$RESULTS" ceiling-read
    fi
  fi

  # Sign-in at full hash capacity, memory sampled, then the memory after the storm.
  if phase signin; then
    hash_limit "$b-signin" before
    note "$b-rss-before-signin" "{\"rss_kib\":$(rss)}"
    start_sampler "$RESULTS/$b-signin-rss.txt"
    run_wrk "$b-signin" signin.lua 16 "$SIGNIN" "$BASE"
    sleep 20
    stop_sampler
    note "$b-rss-after-signin" "{\"rss_kib\":$(rss)}"
    hash_limit "$b-signin" after
  fi

  if phase register; then
    hash_limit "$b-register" before
    run_wrk "$b-register" register.lua 16 "$REGISTER" "$BASE"
    hash_limit "$b-register" after
  fi

  # The read during a sign-in storm bigger than the hashing queue: clients that wait the
  # Retry-After of a shed sign-in (the storm), then clients that retry at once (the flood).
  if phase storm; then
    local kind retry
    for kind in storm flood; do
      retry=$([ "$kind" = storm ] && echo 1 || echo 0)
      run_wrk "$b-$kind-signin" signin.lua "$STORM_CONNECTIONS" "$((DURATION + 4))" "$BASE" \
        RETRY_AFTER="$retry" &
      local storm=$!
      sleep 2
      run_wrk "$b-read-in-$kind" read.lua "$CONNECTIONS" "$DURATION" "$BASE"
      wait "$storm"
      sleep 5
      run_wrk "$b-read-after-$kind" read.lua "$CONNECTIONS" "$DURATION" "$BASE"
    done
  fi

  if [ "$BIG" -gt "$USERS" ]; then
    echo "==> $b: $BIG accounts"
    stop_server
    "$BIN/load-users" "$url" "$USERS" "$BIG" "$PASSWORD" >"$RESULTS/$b-load-big.json"
    settle "$b"
    start_server "$b-big"
    sleep 2
    python3 "$ROOT/bench/report.py" tokens "$BASE" "$BIG" "$TOKENS" "$PASSWORD" "$WORK/tokens"
    local round
    for round in $(seq "$ROUNDS"); do
      run_wrk "$b-big-read-r$round" read.lua "$CONNECTIONS" "$DURATION" "$BASE"
    done
    python3 "$ROOT/bench/report.py" median "$RESULTS" "$b-big-read"
    hash_limit "$b-big-signin" before
    run_wrk "$b-big-signin" signin.lua 16 "$DURATION" "$BASE" USERS="$BIG"
    hash_limit "$b-big-signin" after
  fi

  if [ "$SOAK" -gt 0 ] && [ "$b" = mariadb ]; then
    # Half the read capacity measured above: each of 32 connections waits long enough
    # between requests, plus one sign-in a second.
    local rate delay
    rate=$(python3 -c "import json; print(json.load(open('$RESULTS/$b-read.json'))['rps'] / 2)")
    delay=$(python3 -c "print(max(1, int(32 * 1000 / $rate)))")
    echo "==> $b: soak, ${SOAK}s at about $rate reads/s (${delay} ms between requests per connection) + 1 sign-in/s"
    start_sampler "$RESULTS/$b-soak-rss.txt"
    run_wrk "$b-soak-signin" signin.lua 1 "$SOAK" "$BASE" DELAY_MS=1000 USERS="$(( BIG > USERS ? BIG : USERS ))" &
    local trickle=$!
    run_wrk "$b-soak-read" read.lua 32 "$SOAK" "$BASE" DELAY_MS="$delay"
    wait "$trickle"
    stop_sampler
  fi
  stop_server
}

for b in $BACKENDS; do measure_backend "$b"; done

mkdir -p "$(dirname "$OUT")"
python3 "$ROOT/bench/report.py" summary "$RESULTS" "$OUT"
echo "JSON: $OUT (chart: python3 bench/report.py chart $OUT docs/img/bench.png)"
