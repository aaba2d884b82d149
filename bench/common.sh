# Shared by the bench scripts (sourced, after `set -euo pipefail`): the release build, a work
# folder and a database of the benchmark's own, both removed on exit with every service it
# started, and `start` for a service. Sets repo, bin, work, admin, db, dburl and auth (the
# `authorization` header of the database's first admin token, also exported to the bench
# clients as PIRUS_BENCH_TOKEN).
# BENCH_ON_EXIT may name a command to run at exit before the clean-up (runs.sh removes its
# container with it).
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}
cargo build -q --release --locked -p pirus-catalogue -p pirus-runner -p pirus-cli -p pirus-tests --bins
bin=$CARGO_TARGET_DIR/release

work=$(mktemp -d /var/tmp/pirus-bench.XXXXXX)
bench_cleanup() {
  ${BENCH_ON_EXIT:-:} >/dev/null 2>&1 || true
  # Services record their pids in files: `start` runs in command substitutions (subshells).
  for pidfile in "$work"/*.pid; do
    [ -e "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$work"
  for d in ${db:-} ${extra_dbs:-}; do
    psql -q "$admin" -c "DROP DATABASE IF EXISTS $d WITH (FORCE)" >/dev/null 2>&1 || true
  done
}
trap bench_cleanup EXIT

url=$(grep '^PIRUS_DATABASE_URL=' /etc/pirus/pirus.env | cut -d= -f2-)
# Loopback, plain TCP (sslmode=disable): the same for every variant and build measured, and
# a build without TLS to PostgreSQL compares with one that has it.
url=${url%%\?*}
admin="${url%/*}/postgres"
db=pirus_bench_$$
psql -q "$admin" -c "CREATE DATABASE $db" >/dev/null
dburl="${url%/*}/$db?sslmode=disable"
# The benchmark database's first admin token: every call carries it, as in a deployment.
PIRUS_BENCH_TOKEN=$("$bin/pirus-catalogue" token bootstrap --database-url "$dburl" | tail -n 1)
export PIRUS_BENCH_TOKEN
auth="authorization: Bearer $PIRUS_BENCH_TOKEN"

# runner_token NODE: a file holding a runner token for NODE (for --token-file).
runner_token() {
  "$bin/pirus-catalogue" token create --database-url "$dburl" --role runner --node "$1" \
    --name "bench runner $1" | tail -n 1 > "$work/runner-$1.token"
  echo "$work/runner-$1.token"
}

# extra_database NAME: a further database of the benchmark's own (dropped on exit); sets
# extra_url to its URL. Not in a subshell: it records the name for the clean-up.
extra_dbs=
extra_database() {
  psql -q "$admin" -c "CREATE DATABASE $1" >/dev/null
  extra_dbs="$extra_dbs $1"
  extra_url="${url%/*}/$1?sslmode=disable"
}

# start NAME BINARY ARGS...: starts a service on free loopback ports, waits for its addresses,
# prints its gRPC address. $work/NAME.addr holds both addresses, $work/NAME.pid its pid.
# START_BIN and START_DB, when set, name another build's folder and another database.
start() {
  local name=$1 binary=$2; shift 2
  "${START_BIN:-$bin}/$binary" --database-url "${START_DB:-$dburl}" \
    --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
    --addr-file "$work/$name.addr" "$@" > "$work/$name.log" 2>&1 &
  echo "$!" > "$work/$name.pid"
  for _ in $(seq 1 100); do [ -s "$work/$name.addr" ] && break; sleep 0.1; done
  [ -s "$work/$name.addr" ] || { echo "$name did not start:" >&2; cat "$work/$name.log" >&2; return 1; }
  sed -E 's/.*"grpc": *"([^"]+)".*/\1/' "$work/$name.addr"
}

# http_addr NAME: the HTTP address of a started service.
http_addr() { sed -E 's/.*"http": *"([^"]+)".*/\1/' "$work/$1.addr"; }
