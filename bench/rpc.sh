#!/usr/bin/env bash
# RPC throughput benchmark (a benchmark, not a test): unary catalogue RPCs driven by
# CONCURRENCY callers (default 32) over four HTTP/2 connections for SECONDS each (default 5),
# beside the gRPC health check measured the same way in the same run (same server, transport
# and client, no database: the baseline). Calls per second, p50 and p99 latency, ratio to the
# baseline.
#
#   GetFile     one row by primary key (1,000 files in the table), with a token, and beside it
#               the same calls to a second catalogue on the same database with --auth none
#               (three rounds each, alternately): what the token check costs; and a third on
#               the same database serving TLS, called with a token: what TLS adds
#   ListFiles   a keyset page of 50
#   CreateFile  one committed insert (an fsync of PostgreSQL's WAL per call, grouped by it)
#
# BASELINE_BIN=<folder of another release build> also measures that build's catalogue, on a
# database of its own, with the same client in the same run (an A/B of two versions; its
# GetFile row is the plain one).
#
# Needs PostgreSQL (deploy/setup.sh --deps-only). Run as root from the repository.
set -euo pipefail
concurrency=${1:-32}
seconds=${2:-5}
. "$(dirname "$0")/common.sh"

grpc=$(start catalogue pirus-catalogue --data-dir "$work/data")
cat_pid=$(cat "$work/catalogue.pid")
# The same service on the same database without token checks (loopback only), to measure what
# the check costs GetFile in the same run.
open_grpc=$(start open pirus-catalogue --data-dir "$work/open-data" --auth none)
# And a third serving TLS (a CA and certificate of the benchmark's own, by deploy/tls.sh).
"$repo/deploy/tls.sh" ca "$work/tls"
"$repo/deploy/tls.sh" issue "$work/tls" catalogue localhost 127.0.0.1
tls_grpc=$(start tls pirus-catalogue --data-dir "$work/tls-data" \
  --tls-cert "$work/tls/catalogue.pem" --tls-key "$work/tls/catalogue.key")
export PIRUS_BENCH_TLS_CA=$work/tls/ca.pem

printf 'catalogue RPC throughput (%s, release build)\n' "$(date -u +%Y-%m-%dT%H:%MZ)"
"$bin/pirus-bench-rpc" "$grpc" "$concurrency" "$seconds" "$open_grpc" "https://$tls_grpc"
printf 'pirus-catalogue peak RSS (VmHWM): %d MiB\n' "$(( $(awk '/VmHWM/ {print $2}' "/proc/$cat_pid/status") / 1024 ))"

if [ -n "${BASELINE_BIN:-}" ]; then
  extra_database "${db}_baseline"
  base_grpc=$(START_BIN=$BASELINE_BIN START_DB=$extra_url start baseline pirus-catalogue --data-dir "$work/base-data")
  printf '\nthe same client against %s/pirus-catalogue (its own database)\n' "$BASELINE_BIN"
  "$bin/pirus-bench-rpc" "$base_grpc" "$concurrency" "$seconds"
  printf 'and this build again, plain GetFile\n'
  "$bin/pirus-bench-rpc" "$grpc" "$concurrency" "$seconds"
fi
