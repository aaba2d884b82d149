#!/usr/bin/env bash
# Run latency and throughput benchmark (a benchmark, not a test), beside a bare LXD baseline
# measured in the same run for the same image:
#
#   bare LXD        lxc init + three disk devices + start + exec + delete, by hand
#   pirus latency   SubmitRun -> DONE of the example pipeline (inputs none, outputs and logs
#                   pushed to the catalogue), sequential runs
#   pirus batch     20 runs submitted at once with --max-runs 4: runs per minute
#
# Needs PostgreSQL and LXD (deploy/setup.sh --deps-only). Run as root from the repository.
set -euo pipefail
sequential=${1:-5}
batch=${2:-20}
BENCH_ON_EXIT="lxc delete --force pirus-bare-bench"
. "$(dirname "$0")/common.sh"
package=$(examples/hello/build.sh)

catalogue=$(start catalogue pirus-catalogue --data-dir "$work/data")
runner=$(start runner pirus-runner --work-dir "$work/runner" --max-runs 4 \
  --node-name "bench-$$" --catalogue-addr "http://$catalogue")

echo "==> pirus: $sequential sequential runs, then $batch at once (--max-runs 4)"
"$bin/pirus-bench-runs" "$catalogue" "$runner" "$package" "$sequential" "$batch" > "$work/pirus.out"
image=$(awk '/^image/ {print $2}' "$work/pirus.out")

echo "==> bare LXD: $sequential x (init, three disk devices, start, exec, delete)"
mkdir -p "$work/bare"/{inputs,outputs,logs}
for i in $(seq 1 "$sequential"); do
  t0=$(date +%s.%N)
  lxc init "$image" pirus-bare-bench >/dev/null
  for d in inputs outputs logs; do
    lxc config device add pirus-bare-bench "$d" disk source="$work/bare/$d" path="/pipeline/$d" >/dev/null
  done
  lxc start pirus-bare-bench
  lxc exec pirus-bare-bench -- /bin/sh -c 'echo hello > /dev/null'
  lxc delete --force pirus-bare-bench
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "bare %.3f\n", b - a }' >> "$work/bare.out"
done

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
bare=$(awk '{print $2}' "$work/bare.out" | median)
pirus=$(awk '/^latency/ {print $2}' "$work/pirus.out" | median)
read -r _ runs seconds < <(grep '^batch' "$work/pirus.out")
printf '\nruns of the example pipeline (%s)\n' "$(date -u +%Y-%m-%dT%H:%MZ)"
printf 'bare LXD (init, 3 disks, start, exec, delete), median of %s: %.3f s\n' "$sequential" "$bare"
printf 'pirus SubmitRun -> DONE, median of %s:                  %.3f s  (%.2fx bare LXD)\n' "$sequential" "$pirus" "$(awk -v p="$pirus" -v b="$bare" 'BEGIN { print p / b }')"
printf 'pirus %s runs at --max-runs 4: %.1f s, %.1f runs/minute\n' "$runs" "$seconds" "$(awk -v n="$runs" -v s="$seconds" 'BEGIN { print n * 60 / s }')"
