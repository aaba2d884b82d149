#!/usr/bin/env bash
# Upload throughput benchmark (a benchmark, not a test): one file of SIZE MiB (default 1024)
# over loopback, measured in the same run as its baselines, ROUNDS times (default 3) in turn;
# the report gives each round and the medians.
#
#   cp + sync          a plain copy of the file, made durable: the disk's own speed
#   tus curl PATCH     curl streaming one tus PATCH into pirus-catalogue (release build)
#   pirus CLI          `pirus file upload` of other content: CreateFile, then its own tus
#                      client's streamed PATCH (the target: within 15% of curl's time)
#   WriteUpload        the gRPC twin, 1 MiB messages (bench client pirus-bench-upload), of
#                      other content than the tus upload's (so that neither is a duplicate)
#   ReadFile           the same client reading that file back whole (a runner's input fetch),
#                      beside `cat` of the tus upload's stored blob; both cold, since uploads
#                      are written with direct I/O
#   sha256 ceiling     the time one core takes to SHA-256 the file's size (`openssl speed`, in
#                      memory): every upload is hashed once, on one core, so this bounds any
#                      single upload (not a target, a yardstick)
#   Node @tus/server   the reference tus server (@tus/server + @tus/file-store), curl PATCH;
#                      also shown with a `sync` after it (what making its bytes durable costs)
#   baseline build     with BASELINE_BIN=<folder of another release build>: the same tus PATCH
#                      into that build's catalogue (its own database), in the same rounds
#
# and the catalogue's peak RSS (VmHWM). Pirus acknowledges an offset only after fsync; the
# Node file store does not fsync, so its number flatters it.
#
# Needs PostgreSQL (deploy/setup.sh --deps-only), curl, node and npm (the @tus packages are
# installed from npm into a temporary folder). Run as root from the repository.
set -euo pipefail
size_mib=${1:-1024}
rounds=${ROUNDS:-3}
. "$(dirname "$0")/common.sh"

input=$work/input.bin
bytes=$((size_mib << 20))
mbs() { awk -v b="$bytes" -v s="$1" 'BEGIN { printf "%.0f", b / 1e6 / s }'; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

echo "==> pirus-catalogue (release)"
grpc=$(start catalogue pirus-catalogue --data-dir "$work/data" --max-upload-size 64GiB)
http=$(http_addr catalogue)
cat_pid=$(cat "$work/catalogue.pid")
if [ -n "${BASELINE_BIN:-}" ]; then
  # Another build's catalogue on a database of its own: the same tus upload against it, in
  # the same rounds (an A/B of two versions).
  extra_database "${db}_baseline"
  START_BIN=$BASELINE_BIN START_DB=$extra_url start baseline pirus-catalogue \
    --data-dir "$work/base-data" --max-upload-size 64GiB > /dev/null
  base_http=$(http_addr baseline)
fi

tus_upload() { # base-url -> seconds for POST + one streamed PATCH
  local base=$1 meta location t0 t1
  meta="filename $(printf bench.bin | base64)"
  t0=$(now)
  location=$(curl -sS -D - -o /dev/null -X POST "$base" -H "$auth" -H 'Tus-Resumable: 1.0.0' \
    -H "Upload-Length: $bytes" -H "Upload-Metadata: $meta" | tr -d '\r' | awk -F': ' 'tolower($1)=="location" {print $2}')
  case $location in http*) ;; *) location="${base%/files*}$location" ;; esac
  curl -sS -f -o /dev/null -X PATCH "$location" -H "$auth" -H 'Tus-Resumable: 1.0.0' \
    -H 'Content-Type: application/offset+octet-stream' -H 'Upload-Offset: 0' \
    -H 'Expect:' -T "$input"
  t1=$(now)
  elapsed "$t0" "$t1"
}

echo "==> Node.js @tus/server + @tus/file-store"
mkdir -p "$work/node" "$work/node-files"
(cd "$work/node" && npm init -y >/dev/null && npm install --silent --no-audit --no-fund @tus/server @tus/file-store >/dev/null)
cp bench/tus-node-server.mjs "$work/node/"
node "$work/node/tus-node-server.mjs" "$work/node-files" > "$work/node.port" 2> "$work/node.log" &
echo "$!" > "$work/node.pid"
for _ in $(seq 1 100); do [ -s "$work/node.port" ] && break; sleep 0.1; done
node_url="http://127.0.0.1:$(cat "$work/node.port")/files"

# One line per round: cp tus grpc node node+sync sha256 cat readfile cli [baseline] (seconds). Each measurement starts with the
# page cache clean of dirty data, so none pays for another's write-back.
results=$work/results
for round in $(seq 1 "$rounds"); do
  # New content every round: an upload of bytes the catalogue already holds would end by
  # dropping its partial file rather than storing it, which is not the case measured.
  echo "==> round $round of $rounds: new ${size_mib} MiB input files"
  head -c "$bytes" /dev/urandom > "$input"
  head -c "$bytes" /dev/urandom > "$work/input-grpc.bin"
  head -c "$bytes" /dev/urandom > "$work/input-cli.bin"
  sync
  t0=$(now); cp "$input" "$work/copy.bin"; sync; t1=$(now)
  cp_s=$(elapsed "$t0" "$t1"); rm -f "$work/copy.bin"; sync
  tus_s=$(tus_upload "http://$http/uploads/files/"); sync
  blob=$(ls -t "$work"/data/blobs/*/* | head -n 1)
  read -r grpc_s read_s < <("$bin/pirus-bench-upload" "$grpc" "$work/input-grpc.bin"); sync
  t0=$(now); cat "$blob" > /dev/null; t1=$(now)
  cat_s=$(elapsed "$t0" "$t1")
  t0=$(now); node_s=$(tus_upload "$node_url"); sync; t1=$(now)
  node_sync_s=$(elapsed "$t0" "$t1")
  rm -rf "${work:?}/node-files/"*; sync
  sha_kbs=$(openssl speed -evp sha256 -bytes 1048576 -seconds 1 2>/dev/null | awk '/^sha256/ { sub("k", "", $2); print $2 }')
  sha_s=$(awk -v b="$bytes" -v k="$sha_kbs" 'BEGIN { printf "%.3f", b / (k * 1000) }')
  t0=$(now)
  HOME=$work/cli-home PIRUS_CATALOGUE_ADDR="http://$grpc" PIRUS_TOKEN=$PIRUS_BENCH_TOKEN \
    "$bin/pirus" file upload "$work/input-cli.bin" > /dev/null 2>&1
  t1=$(now)
  cli_s=$(elapsed "$t0" "$t1"); sync
  base_s=
  if [ -n "${BASELINE_BIN:-}" ]; then
    base_s=$(tus_upload "http://$base_http/uploads/files/"); sync
    rm -rf "${work:?}/base-data/blobs/"*; sync
  fi
  echo "$cp_s $tus_s $grpc_s $node_s $node_sync_s $sha_s $cat_s $read_s $cli_s $base_s" >> "$results"
done
rss_kib=$(awk '/VmHWM/ {print $2}' "/proc/$cat_pid/status")

printf '\nupload of %s MiB over loopback, %s rounds (%s)\n' "$size_mib" "$rounds" "$(date -u +%Y-%m-%dT%H:%MZ)"
printf '%-36s' ""; for round in $(seq 1 "$rounds"); do printf '%9s' "round $round"; done
printf '%9s %8s\n' median "MB/s"
labels=("cp + sync (baseline)" "pirus tus PATCH (curl, fsync)" "pirus WriteUpload (gRPC, fsync)" \
  "Node @tus/server (no fsync)" "Node @tus/server, then sync" "sha256 on one core (openssl speed)" \
  "cat of a stored blob (cold)" "pirus ReadFile (gRPC, cold)" "pirus file upload (the CLI)" \
  "baseline build: tus PATCH")
columns=9; [ -n "${BASELINE_BIN:-}" ] && columns=10
medians=()
for column in $(seq 1 "$columns"); do
  values=$(awk -v c="$column" '{print $c}' "$results")
  median=$(echo "$values" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
  medians+=("$median")
  printf '%-36s' "${labels[$((column - 1))]}"
  for v in $values; do printf '%9s' "$v"; done
  printf '%9s %8s\n' "$median" "$(mbs "$median")"
done
awk -v cp="${medians[0]}" -v t="${medians[1]}" -v g="${medians[2]}" -v n="${medians[3]}" \
  -v c="${medians[6]}" -v r="${medians[7]}" -v l="${medians[8]}" 'BEGIN {
  printf "ratios of medians: tus/Node %.2fx, WriteUpload/Node %.2fx, tus/cp %.2f, WriteUpload/cp %.2f, ReadFile/cat %.2f, CLI time/curl time %.2f\n", n/t, n/g, cp/t, cp/g, c/r, l/t }'
printf 'pirus-catalogue peak RSS over every upload (VmHWM): %d MiB\n' "$((rss_kib / 1024))"
