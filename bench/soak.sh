#!/usr/bin/env bash
# Soak (a benchmark, not a test): a catalogue and a runner (real LXD, --max-runs 2) with the
# example pipeline, under load for MINUTES (default 30): a run submitted every 3 s (each with
# its own request id) and 4 readers calling ListRuns and GetRun without pause (pirus-soak).
# The runner is killed with SIGKILL and started again (same node, same ports) at a third and
# at two thirds of the time. Every 5 s the runner's and the catalogue's RSS and the
# benchmark database's connections are sampled; at the end pirus-soak checks that every
# submission made exactly one run and how each ended, and bench/plot.py draws the samples
# (SVG) into OUT (default docs/soak.svg).
#
# Usage: bench/soak.sh [MINUTES] [OUT]   (as root, PostgreSQL and LXD up)
set -euo pipefail
minutes=${1:-30}
out=${2:-docs/soak.svg}
case $out in /*) ;; *) out=$PWD/$out ;; esac
pool=${POOL:-pirus}
. "$(dirname "$0")/common.sh"
package=$(examples/hello/build.sh)

catalogue=$(start catalogue pirus-catalogue --data-dir "$work/data")
node="soak-$$"
token_file=$(runner_token "$node")
runner_args=(--work-dir "$work/runner" --max-runs 2 --node-name "$node" --token-file "$token_file"
  --catalogue-addr "http://$catalogue" --lxd-storage-pool "$pool")
runner=$(start runner pirus-runner "${runner_args[@]}")
runner_http=$(http_addr runner)

# The example pipeline, through the pirus client.
export PIRUS_CATALOGUE_ADDR=http://$catalogue PIRUS_RUNNER_ADDR=http://$runner PIRUS_TOKEN=$PIRUS_BENCH_TOKEN
"$bin/pirus" --settings /dev/null pipeline upload "$package" >/dev/null
pipeline=$("$bin/pirus" --settings /dev/null --json pipeline show hello | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')

rss() { awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$1/status" 2>/dev/null || echo nan; }
started=$(date +%s)
sample() {
  while :; do
    local conns
    conns=$(psql -qtA "$admin" -c "SELECT count(*) FROM pg_stat_activity WHERE datname = '$db'" 2>/dev/null || echo nan)
    echo "$(( $(date +%s) - started )) $(rss "$(cat "$work/runner.pid")") $(rss "$(cat "$work/catalogue.pid")") $conns" >> "$work/samples"
    sleep 5
  done
}
sample &
echo "$!" > "$work/sampler.pid"

echo "==> soak: $minutes minutes; the runner is killed and restarted at a third and two thirds"
"$bin/pirus-soak" "$runner" "$pipeline" "$minutes" > "$work/soak.out" &
client=$!
restarts=
for fraction in 1 2; do
  sleep "$(( minutes * 60 / 3 ))"
  kill -9 "$(cat "$work/runner.pid")"
  at=$(( $(date +%s) - started ))
  restarts="$restarts $at"
  echo "    $(date -u +%H:%M:%S) runner killed (kill -9) at ${at}s; starting it again"
  sleep 2
  "$bin/pirus-runner" --database-url "$dburl" --grpc-addr "$runner" --http-addr "$runner_http" \
    --addr-file "$work/runner.addr" "${runner_args[@]}" >> "$work/runner.log" 2>&1 &
  echo "$!" > "$work/runner.pid"
done
wait "$client"
kill "$(cat "$work/sampler.pid")" 2>/dev/null || true
cat "$work/soak.out"
python3 "$repo/bench/plot.py" "$work/samples" "$out" "Pirus soak, $minutes minutes ($(date -u +%Y-%m-%d))" $restarts
echo "plot: $out"
awk 'NR == 1 || $1 % 300 < 5 { printf "t=%5ss runner %6s MiB  catalogue %6s MiB  db connections %s\n", $1, $2, $3, $4 }' "$work/samples"
