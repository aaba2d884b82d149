#!/usr/bin/env bash
# Control-plane load benchmark (a benchmark, not a test): a catalogue and a runner on a
# database seeded with RUNS runs (default 100,000) of EVENTS events each (default 10) and FILES
# files (default 100,000) by bench/seed.sql, then bench's load generator (pirus-load) drives
# GetRun, ListRuns with a filter (as an admin and as a user owning one run in ten; and at a
# fixed offered rate, PIRUS_LOAD_LIST_RATE pages a second, default 1,000),
# ListFiles, SubmitRun, and the WatchRun fan-out (a status change to WATCHERS watchers), each
# beside the runner's gRPC health check through the same client, and prints the issue's
# targets beside the figures. The runner takes no runs (--max-runs 0): submitted runs stay
# queued, and no LXD is needed.
#
# Usage: bench/load.sh [CONCURRENCY] [SECONDS] [WATCHERS]   (as root, PostgreSQL up)
set -euo pipefail
concurrency=${1:-32}
seconds=${2:-5}
watchers=${3:-1000}
runs=${RUNS:-100000}
events=${EVENTS:-10}
files=${FILES:-100000}
. "$(dirname "$0")/common.sh"

catalogue=$(start catalogue pirus-catalogue --data-dir "$work/data")
made=$("$bin/pirus-catalogue" token create --database-url "$dburl" --role user --name "load user")
user_accessor=$(sed -nE 's/.*\(accessor ([0-9a-f-]+)\).*/\1/p' <<< "$made")
export PIRUS_LOAD_USER_TOKEN=$(tail -n 1 <<< "$made")

echo "==> seeding $runs runs x $events events and $files files (bench/seed.sql)"
t0=$(date +%s.%N)
pipeline=$(psql -qtA "$dburl" -f "$repo/bench/seed.sql" \
  -c "SELECT pg_temp.pirus_seed($runs, $events, $files, '$user_accessor')" | tail -n 1)
t1=$(date +%s.%N)
# Vacuumed as a database in service would be: otherwise autovacuum visits the million new rows
# during the first measurements and takes a core from them.
psql -q "$dburl" -c "VACUUM (FREEZE, ANALYZE) runs, run_events, run_attempts, files"
# And on disk: the seed leaves about a gigabyte of dirty pages, which the kernel writes back
# some 30 s later, in the middle of SubmitRun and the fan-out, stalling commits behind it
# (SubmitRun p99 72 and 242 ms, a status change to the watchers 158 ms, in two runs of three).
# (CHECKPOINT needs a superuser: the local postgres one, as the setup has it.)
runuser -u postgres -- psql -qX -c "CHECKPOINT"
sync
counts=$(psql -qtA -F ' ' "$dburl" -c "SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM run_events), (SELECT count(*) FROM files)")
read -r n_runs n_events n_files <<< "$counts"
printf 'seeded %s runs, %s events, %s files in %.1f s\n' "$n_runs" "$n_events" "$n_files" \
  "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')"

runner=$(start runner pirus-runner --work-dir "$work/runner" --max-runs 0 \
  --node-name "load-$$" --token-file "$(runner_token "load-$$")" \
  --catalogue-addr "http://$catalogue" --max-streams-per-caller 4096)

printf '\ncontrol plane under load (%s, release build, client, services and PostgreSQL on this host)\n' \
  "$(date -u +%Y-%m-%dT%H:%MZ)"
"$bin/pirus-load" "$runner" "$catalogue" "$pipeline" "$concurrency" "$seconds" "$watchers" \
  || { echo "the load generator failed; the runner's log ends:" >&2; grep -iE "goaway|error|reset" "$work/runner.log" | tail -20 >&2; exit 1; }
printf 'pirus-runner peak RSS (VmHWM): %d MiB\n' "$(( $(awk '/VmHWM/ {print $2}' "/proc/$(cat "$work/runner.pid")/status") / 1024 ))"
