#!/usr/bin/env bash
# RPC throughput benchmark (a benchmark, not a test): unary catalogue RPCs driven by
# CONCURRENCY callers (default 32) over four HTTP/2 connections for SECONDS each (default 5),
# beside the gRPC health check measured the same way in the same run (same server, transport
# and client, no database: the baseline). Calls per second, p50 and p99 latency, ratio to the
# baseline.
#
#   GetFile     one row by primary key (1,000 files in the table)
#   ListFiles   a keyset page of 50
#   CreateFile  one committed insert (an fsync of PostgreSQL's WAL per call, grouped by it)
#
# Needs PostgreSQL (deploy/setup.sh --deps-only). Run as root from the repository.
set -euo pipefail
concurrency=${1:-32}
seconds=${2:-5}
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}
cargo build -q --release --locked -p pirus-catalogue -p pirus-tests --bins
bin=$CARGO_TARGET_DIR/release

work=$(mktemp -d /var/tmp/pirus-bench.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
  [ -n "${db:-}" ] && psql -q "$admin" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT

url=$(grep '^PIRUS_DATABASE_URL=' /etc/pirus/pirus.env | cut -d= -f2-)
admin="${url%/*}/postgres"
db=pirus_bench_$$
psql -q "$admin" -c "CREATE DATABASE $db" >/dev/null

"$bin/pirus-catalogue" --database-url "${url%/*}/$db" --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
  --addr-file "$work/addr.json" --data-dir "$work/data" > "$work/catalogue.log" 2>&1 &
cat_pid=$!; pids+=("$cat_pid")
for _ in $(seq 1 100); do [ -s "$work/addr.json" ] && break; sleep 0.1; done
grpc=$(sed -E 's/.*"grpc": *"([^"]+)".*/\1/' "$work/addr.json")

printf 'catalogue RPC throughput (%s, release build)\n' "$(date -u +%Y-%m-%dT%H:%MZ)"
"$bin/pirus-bench-rpc" "$grpc" "$concurrency" "$seconds"
printf 'pirus-catalogue peak RSS (VmHWM): %d MiB\n' "$(( $(awk '/VmHWM/ {print $2}' "/proc/$cat_pid/status") / 1024 ))"
