#!/usr/bin/env bash
# Small-chunk benchmark (a benchmark, not a test): the cost of one tus PATCH of a small chunk
# (lock, write, fdatasync, offset commit, unlock) beside a HEAD of the same upload, on one
# keep-alive connection, against a release pirus-catalogue. Arguments go to bench/chunks.py
# (COUNT, CHUNK_BYTES).
#
# Needs PostgreSQL (deploy/setup.sh --deps-only). Run as root from the repository.
set -euo pipefail
. "$(dirname "$0")/common.sh"
start catalogue pirus-catalogue --data-dir "$work/data" > /dev/null
printf 'small tus PATCHes (%s, release build)\n' "$(date -u +%Y-%m-%dT%H:%MZ)"
python3 bench/chunks.py "$(http_addr catalogue)" "$@"
