#!/usr/bin/env bash
# A real pipeline run, end to end, against the running services (deploy/setup.sh starts them
# and then calls this): the example package and an input file are uploaded with tus, the
# pipeline installs, a run is submitted with grpcurl, its events are followed to the end, and
# its outputs are read back from the catalogue. Every call carries the admin token
# (PIRUS_DEMO_TOKEN_FILE, default /etc/pirus/admin.token, which deploy/setup.sh keeps), over TLS
# checked against the deployment's CA (PIRUS_DEMO_CA, default /etc/pirus/tls/ca.pem).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
catalogue=${PIRUS_DEMO_CATALOGUE:-localhost:50051}
runner=${PIRUS_DEMO_RUNNER:-localhost:50052}
http=${PIRUS_DEMO_HTTP:-https://localhost:8080}
ca=${PIRUS_DEMO_CA:-/etc/pirus/tls/ca.pem}
token_file=${PIRUS_DEMO_TOKEN_FILE:-/etc/pirus/admin.token}
[ -r "$token_file" ] || { echo "demo: cannot read the token in $token_file" >&2; exit 1; }
bearer="authorization: Bearer $(cat "$token_file")"
grpc() { grpcurl -cacert "$ca" -H "$bearer" "$@"; }
curl() { command curl --cacert "$ca" "$@"; }
say() { printf '==> %s\n' "$*"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

tus_upload() { # endpoint file -> upload id
  local size meta location
  size=$(stat -c %s "$2")
  meta="filename $(printf %s "$(basename "$2")" | base64 -w0)"
  location=$(curl -sSf -D - -o /dev/null -X POST "$http/uploads/$1/" -H "$bearer" -H 'Tus-Resumable: 1.0.0' \
    -H "Upload-Length: $size" -H "Upload-Metadata: $meta" | tr -d '\r' | awk -F': ' 'tolower($1)=="location" {print $2}')
  curl -sSf -o /dev/null -X PATCH "$location" -H "$bearer" -H 'Tus-Resumable: 1.0.0' \
    -H 'Content-Type: application/offset+octet-stream' -H 'Upload-Offset: 0' -H 'Expect:' --data-binary @"$2"
  echo "${location##*/}"
}

package=$("$repo/examples/hello/build.sh")
pipeline=$(grpc -d '{"name": "hello", "status": "PIPELINE_STATUS_READY"}' "$catalogue" \
  pirus.catalogue.v1.CatalogueService/ListPipelines | json 'd.get("pipelines", [{}])[0].get("id", "")')
if [ -z "$pipeline" ]; then
  say "uploading the example pipeline package ($(basename "$package")) with tus"
  pipeline=$(tus_upload pipelines "$package")
  for _ in $(seq 1 300); do
    status=$(grpc -d "{\"id\": \"$pipeline\"}" "$catalogue" \
      pirus.catalogue.v1.CatalogueService/GetPipeline | json 'd["status"]')
    case $status in PIPELINE_STATUS_READY|PIPELINE_STATUS_ERROR) break ;; esac
    sleep 0.2
  done
  [ "$status" = PIPELINE_STATUS_READY ] || { echo "demo: the pipeline did not install ($status)" >&2; exit 1; }
fi
say "pipeline hello 1.0.0 ready: $pipeline"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
input=$scratch/words.txt
printf 'Pirus runs containerised analysis pipelines\non LXD hosts.\n' > "$input"
file=$(tus_upload files "$input")
say "input file uploaded: $file"

run=$(grpc -d "{\"pipeline_id\": \"$pipeline\", \"name\": \"demo\",
  \"config_json\": \"{\\\"greeting\\\": \\\"bonjour\\\"}\", \"input_file_ids\": [\"$file\"]}" \
  "$runner" pirus.runner.v1.RunnerService/SubmitRun | json 'd["id"]')
say "run submitted: $run; its events:"
grpc -max-time 300 -d "{\"run_id\": \"$run\"}" "$runner" pirus.runner.v1.RunnerService/WatchRun |
  python3 -c '
import json, sys
buffer = ""
for line in sys.stdin:
    buffer += line
    if line.startswith("}"):
        e = json.loads(buffer); buffer = ""
        p = e.get("progress", {})
        print("    #%-3s %-22s %5.2f  %s" % (e["seq"], e["status"], p.get("value", 0), e.get("message", "")))
'
result=$(grpc -d "{\"id\": \"$run\"}" "$runner" pirus.runner.v1.RunnerService/GetRun)
status=$(echo "$result" | json 'd["status"]')
say "run $run ended $status"
for output in $(echo "$result" | json '" ".join(d.get("outputFileIds", []))'); do
  name=$(grpc -d "{\"id\": \"$output\"}" "$catalogue" pirus.catalogue.v1.CatalogueService/GetFile | json 'd["name"]')
  content=$(grpc -d "{\"file_id\": \"$output\"}" "$catalogue" pirus.catalogue.v1.CatalogueService/ReadFile |
    python3 -c '
import base64, json, sys
text = sys.stdin.read()
decoder, i, out = json.JSONDecoder(), 0, b""
while i < len(text):
    while i < len(text) and text[i].isspace(): i += 1
    if i >= len(text): break
    obj, i = decoder.raw_decode(text, i)
    out += base64.b64decode(obj.get("data", ""))
sys.stdout.write(out.decode())
')
  printf '    output %s: %s\n' "$name" "$content"
done
[ "$status" = RUN_STATUS_DONE ]
