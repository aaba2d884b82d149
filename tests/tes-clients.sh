#!/usr/bin/env bash
# The stock TES clients the TES tests (tests/tests/tes.rs) drive runners with, each in a
# virtual environment of its own under $PIRUS_TES_VENVS (default /var/cache/pirus/venv), made
# once and again only when what it should hold changes:
#   pytes11     py-tes 1.1.x, the current Python client
#   pytes04     py-tes 0.4.x (what Snakemake's TES executor pins: /v1 paths, TES 1.0 states,
#               unknown keys rejected), with six beside it
#   compliance  the GA4GH TES compliance suite (openapi-test-runner, elixir-cloud-aai), kept
#               in tests/tes-compliance (Apache-2.0, upstream commit in UPSTREAM_COMMIT); its
#               pinned 2022 dependencies do not build on Python 3.11, so the same libraries at
#               versions that do are installed (pydantic kept at 1.x, which its models need)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
root=${PIRUS_TES_VENVS:-/var/cache/pirus/venv}
mkdir -p "$root"

# make <name> <package>...: the virtual environment <name> holding exactly these packages.
make_venv() {
  local name=$1; shift
  local dir="$root/$name" want="$*"
  if [ -x "$dir/bin/python" ] && [ "$(cat "$dir/.pirus-packages" 2>/dev/null)" = "$want" ]; then
    return
  fi
  echo "==> TES client environment $name: $want"
  rm -rf "$dir"
  python3 -m venv "$dir"
  "$dir/bin/pip" install --quiet --disable-pip-version-check "$@"
  echo "$want" > "$dir/.pirus-packages"
}

make_venv pytes11 'py-tes==1.1.4'
make_venv pytes04 'py-tes==0.4.2' 'six==1.16.0'
make_venv compliance 'click==8.1.7' 'jsonschema==4.23.0' 'polling2==0.5.0' 'pydantic==1.10.19' \
  'PyYAML==6.0.2' 'requests==2.32.3' 'colorlog==6.9.0' 'ga4gh-testbed-lib==0.2.0' \
  'jinja2==3.1.4' 'dotmap==1.3.30' 'setuptools<81'
