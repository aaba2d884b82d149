#!/usr/bin/env bash
# Checks the protos, which are Pirus's API contract: `buf lint` (the STANDARD rules and every
# element documented, proto/buf.yaml) and `buf breaking` against the contract as last released
# (the newest tag v*; main when there is none), so an incompatible change cannot land
# unnoticed. Installs buf from npm (@bufbuild/buf) when it is missing. CI runs this.
#
#   proto/check.sh            lint, and breaking against the newest release tag
#   proto/check.sh REF        breaking against another git ref (a branch, a tag, a commit)
#   proto/check.sh --install  only install buf (the test suite's contract tests run it)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

BUF_VERSION=1.75.0
if ! command -v buf >/dev/null 2>&1 || [ "$(buf --version)" != "$BUF_VERSION" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "==> installing npm (Debian)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null
  fi
  echo "==> installing buf $BUF_VERSION (npm @bufbuild/buf)"
  npm install --global --silent --no-audit --no-fund "@bufbuild/buf@$BUF_VERSION" >/dev/null
  hash -r
fi

[ "${1:-}" = --install ] && exit 0

echo "==> buf lint"
buf lint proto

base=${1:-$(git describe --tags --abbrev=0 --match 'v*' 2>/dev/null || echo main)}
echo "==> buf breaking against $base"
buf breaking proto --against "$repo/.git#ref=$base,subdir=proto"
