#!/usr/bin/env bash
# A real pipeline run, end to end, against the running services (deploy/setup.sh starts them
# and then calls this), done with the `pirus` command-line client: the example package is
# uploaded and installed, a run is submitted with a local input file (uploaded first) and
# followed live to its end (its logs streamed, the command exiting with the run's code), and
# its outputs are downloaded, verified, and printed. The client reads its settings from
# ~/.config/pirus/config.toml, which deploy/setup.sh writes for root: the services' https
# addresses, the deployment CA, and the admin token's file.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
pirus=${PIRUS_DEMO_CLI:-pirus}
say() { printf '==> %s\n' "$*"; }

package=$("$repo/examples/hello/build.sh")
if ! "$pirus" pipeline show hello >/dev/null 2>&1; then
  say "uploading and installing the example pipeline ($(basename "$package"))"
  "$pirus" pipeline upload "$package"
fi
say "pipeline hello:"
"$pirus" pipeline show hello

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
input=$scratch/words.txt
printf 'Pirus runs containerised analysis pipelines\non LXD hosts.\n' > "$input"

say "submitting a run of hello with $input, followed to its end"
"$pirus" run submit hello --name demo --input "$input" --config greeting=bonjour --follow
# The newest run named demo (lists are oldest first).
run=$("$pirus" --json run list | python3 -c '
import json, sys
print([r for r in json.load(sys.stdin) if r["name"] == "demo"][-1]["id"])')
say "run $run: its outputs, downloaded and verified:"
"$pirus" run outputs "$run" --download "$scratch/outputs"
( cd "$scratch/outputs" && find . -type f | sort | while read -r f; do
    printf '    output %s: %s\n' "${f#./}" "$(head -c 200 "$f" | tr '\n' ' ')"
  done )
say "what the admin's principal uses now (its quotas: unlimited unless set):"
"$pirus" usage
