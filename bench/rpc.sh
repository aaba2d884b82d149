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
#   tus POST    an upload created over HTTP (the same insert, through the tus edge)
#
# BASELINE_BIN=<folder of another release build> also measures that build's catalogue, on a
# database of its own, in turn with this build's (--auth none) three times, with the same
# client in the same run: an A/B of two versions, medians side by side. The baseline is
# started with BASELINE_ARGS (default `--auth none`, as this build's is; empty for a build
# from before identity, which has no --auth).
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
PIRUS_BENCH_TUS_URL="http://$(http_addr catalogue)/uploads/files/" PIRUS_BENCH_SERVER_PIDS="$cat_pid,$(cat "$work/open.pid"),$(cat "$work/tls.pid")" \
  "$bin/pirus-bench-rpc" "$grpc" "$concurrency" "$seconds" "$open_grpc" "https://$tls_grpc"
printf 'pirus-catalogue peak RSS (VmHWM): %d MiB\n' "$(( $(awk '/VmHWM/ {print $2}' "/proc/$cat_pid/status") / 1024 ))"

if [ -n "${BASELINE_BIN:-}" ]; then
  # The baseline build on a database of its own, and this build's plain catalogue, driven in
  # turn by the same client, three times each: the medians compare the two builds.
  extra_database "${db}_baseline"
  # shellcheck disable=SC2086 # BASELINE_ARGS is a list of words
  base_grpc=$(START_BIN=$BASELINE_BIN START_DB=$extra_url start baseline pirus-catalogue \
    --data-dir "$work/base-data" ${BASELINE_ARGS---auth none})
  for round in 1 2 3; do
    PIRUS_BENCH_TUS_URL="http://$(http_addr baseline)/uploads/files/" \
    PIRUS_BENCH_SERVER_PIDS=$(cat "$work/baseline.pid") "$bin/pirus-bench-rpc" "$base_grpc" \
      "$concurrency" "$seconds" | sed "s/^/base $round | /" >> "$work/ab.out"
    PIRUS_BENCH_TUS_URL="http://$(http_addr open)/uploads/files/" \
    PIRUS_BENCH_SERVER_PIDS=$(cat "$work/open.pid") "$bin/pirus-bench-rpc" "$open_grpc" \
      "$concurrency" "$seconds" | sed "s/^/this $round | /" >> "$work/ab.out"
  done
  printf '\nA/B: %s/pirus-catalogue (base) and this build with --auth none (this), the same client in turn, 3 rounds\n' "$BASELINE_BIN"
  printf '%-30s %10s %10s %9s %14s %14s\n' "medians" "base /s" "this /s" this/base \
    "base us/call" "this us/call"
  for rpc in "grpc.health.v1.Health/Check" GetFile ListFiles CreateFile "tus POST"; do
    # calls/s: the first number of the row; the server's CPU per call: its last field.
    med() { grep "^$1 [0-9] | $rpc" "$work/ab.out" | awk -F'|' -v last="$2" '{ n = split($2, f, " "); if (last) { print f[n]; next } for (i = 1; i <= n; i++) if (f[i] ~ /^[0-9]+$/ && f[i] > 0) { print f[i]; break } }' \
      | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
    b=$(med base ""); t=$(med this ""); bc=$(med base 1); tc=$(med this 1)
    printf '%-30s %10s %10s %8.2fx %14s %14s\n' "$rpc" "$b" "$t" \
      "$(awk -v t="$t" -v b="$b" 'BEGIN { print t / b }')" "$bc" "$tc"
  done
fi
