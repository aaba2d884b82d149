#!/usr/bin/env bash
# Run latency and throughput benchmark (a benchmark, not a test), beside bare LXD baselines
# measured in the same run for the same image on the same storage pool (POOL, default pirus):
#
#   bare LXD        lxc init + three disk devices + start + exec + delete, by hand
#   bare, bounded   the same with what Pirus gives every run: an isolated id range, CPU,
#                   memory and process limits, a sized root disk, and a sized custom volume
#                   for the writable folders (created and deleted)
#   pirus latency   SubmitRun -> DONE of the example pipeline (inputs none, outputs and logs
#                   pushed to the catalogue), sequential runs
#   pirus batch     20 runs submitted at once with --max-runs 4: runs per minute
#   TES vs gRPC     alternately, a TES task (one trivial executor, one output) submitted to
#                   the runner's /ga4gh/tes/v1 and polled to COMPLETE, and the example run
#                   submitted over gRPC and watched to DONE
#   baseline build  with BASELINE_BIN=<folder of another release build>: its catalogue and
#                   runner (own database) through the same client, latency and batch
#
# Needs PostgreSQL and LXD (deploy/setup.sh --deps-only). Run as root from the repository.
set -euo pipefail
sequential=${1:-5}
batch=${2:-20}
pool=${POOL:-pirus}
BENCH_ON_EXIT="lxc delete --force pirus-bare-bench; lxc storage volume delete $pool pirus-bare-bench"
. "$(dirname "$0")/common.sh"
package=$(examples/hello/build.sh)

catalogue=$(start catalogue pirus-catalogue --data-dir "$work/data")
runner=$(start runner pirus-runner --work-dir "$work/runner" --max-runs 4 \
  --node-name "bench-$$" --token-file "$(runner_token "bench-$$")" \
  --catalogue-addr "http://$catalogue" --lxd-storage-pool "$pool")

echo "==> pirus: $sequential sequential runs, then $batch at once (--max-runs 4)"
PIRUS_BENCH_TES="http://$(http_addr runner)" \
  "$bin/pirus-bench-runs" "$catalogue" "$runner" "$package" "$sequential" "$batch" > "$work/pirus.out"
image=$(awk '/^image/ {print $2}' "$work/pirus.out")

if [ -n "${BASELINE_BIN:-}" ]; then
  # Another build's catalogue and runner, on a database of their own, driven by the same
  # client in the same run (an A/B of two versions).
  echo "==> the baseline build in $BASELINE_BIN: the same runs"
  extra_database "${db}_baseline"
  base_catalogue=$(START_BIN=$BASELINE_BIN START_DB=$extra_url start base-catalogue \
    pirus-catalogue --data-dir "$work/base-data")
  base_runner=$(START_BIN=$BASELINE_BIN START_DB=$extra_url start base-runner pirus-runner \
    --work-dir "$work/base-runner" --max-runs 4 --node-name "bench-base-$$" \
    --catalogue-addr "http://$base_catalogue" --lxd-storage-pool "$pool")
  "$bin/pirus-bench-runs" "$base_catalogue" "$base_runner" "$package" "$sequential" "$batch" > "$work/base.out"
fi

echo "==> bare LXD on pool $pool: $sequential x (init, three disk devices, start, exec, delete), plain then bounded"
mkdir -p "$work/bare"/{inputs,outputs,logs}
volumes=/var/lib/lxd/storage-pools/$pool/custom
bare() { # kind: plain or bounded
  local t0 t1 src=$work/bare extra=()
  t0=$(date +%s.%N)
  if [ "$1" = bounded ]; then
    lxc storage volume create "$pool" pirus-bare-bench size=8GiB >/dev/null
    src=$volumes/default_pirus-bare-bench
    mkdir -p "$src"/{outputs,logs}
    extra=(-c security.idmap.isolated=true -c limits.cpu=1 -c limits.memory=2GiB
           -c limits.processes=2048 -d root,size=8GiB)
  fi
  lxc init "$image" pirus-bare-bench -s "$pool" "${extra[@]}" >/dev/null
  lxc config device add pirus-bare-bench inputs disk source="$work/bare/inputs" path=/pipeline/inputs readonly=true >/dev/null
  for d in outputs logs; do
    lxc config device add pirus-bare-bench "$d" disk source="$src/$d" path="/pipeline/$d" >/dev/null
  done
  lxc start pirus-bare-bench
  lxc exec pirus-bare-bench -- /bin/sh -c 'echo hello > /dev/null'
  lxc delete --force pirus-bare-bench
  [ "$1" = bounded ] && lxc storage volume delete "$pool" pirus-bare-bench >/dev/null
  t1=$(date +%s.%N)
  awk -v k="$1" -v a="$t0" -v b="$t1" 'BEGIN { printf "%s %.3f\n", k, b - a }' >> "$work/bare.out"
}
for i in $(seq 1 "$sequential"); do bare plain; bare bounded; done

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
bare=$(awk '/^plain/ {print $2}' "$work/bare.out" | median)
bounded=$(awk '/^bounded/ {print $2}' "$work/bare.out" | median)
pirus=$(awk '/^latency/ {print $2}' "$work/pirus.out" | median)
read -r _ runs seconds < <(grep '^batch' "$work/pirus.out")
printf '\nruns of the example pipeline (%s)\n' "$(date -u +%Y-%m-%dT%H:%MZ)"
printf 'pool %s\n' "$pool"
printf 'bare LXD (init, 3 disks, start, exec, delete), median of %s: %.3f s\n' "$sequential" "$bare"
printf 'bare LXD, bounded like a Pirus run, median of %s:          %.3f s\n' "$sequential" "$bounded"
printf 'pirus SubmitRun -> DONE, median of %s:                  %.3f s  (%.2fx bare LXD, %.2fx bounded)\n' "$sequential" "$pirus" \
  "$(awk -v p="$pirus" -v b="$bare" 'BEGIN { print p / b }')" "$(awk -v p="$pirus" -v b="$bounded" 'BEGIN { print p / b }')"
printf 'pirus %s runs at --max-runs 4: %.1f s, %.1f runs/minute\n' "$runs" "$seconds" "$(awk -v n="$runs" -v s="$seconds" 'BEGIN { print n * 60 / s }')"
tes=$(awk '/^tes/ {print $2}' "$work/pirus.out" | median)
grpc=$(awk '/^grpc/ {print $2}' "$work/pirus.out" | median)
printf 'TES task submit -> COMPLETE, median of %s (alternating): %.3f s\n' "$sequential" "$tes"
printf 'gRPC SubmitRun -> DONE, median of %s (alternating):      %.3f s  (TES %.2fx of it)\n' "$sequential" "$grpc" \
  "$(awk -v t="$tes" -v g="$grpc" 'BEGIN { print t / g }')"
if [ -n "${BASELINE_BIN:-}" ]; then
  base=$(awk '/^latency/ {print $2}' "$work/base.out" | median)
  read -r _ base_runs base_seconds < <(grep '^batch' "$work/base.out")
  printf 'baseline build SubmitRun -> DONE, median of %s:         %.3f s  (this build %.2fx of it)\n' \
    "$sequential" "$base" "$(awk -v p="$pirus" -v b="$base" 'BEGIN { print p / b }')"
  printf 'baseline build %s runs at --max-runs 4: %.1f s, %.1f runs/minute\n' "$base_runs" "$base_seconds" \
    "$(awk -v n="$base_runs" -v s="$base_seconds" 'BEGIN { print n * 60 / s }')"
fi
