#!/usr/bin/env bash
# Claim latency (a benchmark, not a test): the database side of one claim transaction (node
# lock, the node's reservation, the fair-share order of the principals with runs waiting, one
# principal's next run taken, rolled back) on a scratch database seeded with RUNS waiting runs
# (default 100,000) spread over 100 principals, run back to back for 10 s by pgbench.
# Prints p50 and p99. Needs PostgreSQL (deploy/setup.sh --deps-only). Run as root.
set -euo pipefail
runs=${1:-100000}
repo=$(cd "$(dirname "$0")/.." && pwd)
db=pirus_claim_bench_$$
trap 'su postgres -c "dropdb --if-exists $db" >/dev/null 2>&1 || true; rm -f /tmp/$db.*' EXIT
su postgres -c "createdb $db"
su postgres -c "psql -q $db -c 'CREATE TABLE seaql_migrations (version text PRIMARY KEY, applied_at bigint)'"
for f in "$repo"/shared/db/src/migrations/m*.sql; do
  su postgres -c "psql -q -v ON_ERROR_STOP=1 $db" < "$f" >/dev/null
done
su postgres -c "psql -q $db" <<SQL
INSERT INTO nodes (name, address, max_runs, lease_seconds, incarnation, capacity_cpus, capacity_memory)
VALUES ('n1', 'x', 64, 30, gen_random_uuid(), 64, 256::bigint << 30);
INSERT INTO principals (id, name, kind, role)
SELECT ('00000000-0000-0000-0000-' || lpad(to_hex(g), 12, '0'))::uuid, 'p' || g, 'person', 'user'
FROM generate_series(1, 100) g;
INSERT INTO runs (id, pipeline_id, pipeline_name, pipeline_version, image_sha256, name, status,
                  config, owner, created_at)
SELECT gen_random_uuid(), gen_random_uuid(), 'p', '1', repeat('a', 64), 'r', 'waiting', '{}',
       ('00000000-0000-0000-0000-' || lpad(to_hex(1 + g % 100), 12, '0'))::uuid,
       now() - (g || ' ms')::interval
FROM generate_series(1, $runs) g;
SQL
su postgres -c "vacuumdb -q -z $db"
cp "$repo/bench/sql/claim.sql" "/tmp/$db.sql"; chmod 644 "/tmp/$db.sql"
( cd /tmp && su postgres -c "pgbench -n -c 1 -T 10 -f /tmp/$db.sql --log --log-prefix=/tmp/$db.log $db" >/dev/null )
cat /tmp/$db.log* | awk '{print $3}' | sort -n |
  awk -v runs="$runs" '{a[NR]=$1} END {printf "claim transaction, %d runs waiting over 100 principals: %d claims, p50 %.2f ms, p99 %.2f ms\n", runs, NR, a[int(NR*0.5)]/1000, a[int(NR*0.99)]/1000}'
