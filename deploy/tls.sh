#!/usr/bin/env bash
# A deployment's certificates, with openssl: one CA of the deployment, and a certificate per
# service host signed by it (good for serving and as a client certificate, for mTLS).
#
#   deploy/tls.sh ca DIR                  make DIR/ca.pem and DIR/ca.key, unless they exist
#   deploy/tls.sh issue DIR NAME HOST...  make DIR/NAME.pem and DIR/NAME.key for these host
#                                         names and IP addresses, signed by DIR/ca
#
# Another runner host: on the host that keeps the CA (deploy/setup.sh keeps it in
# /etc/pirus/tls), issue one for its name and addresses, e.g.
#   deploy/tls.sh issue /etc/pirus/tls runner-node2 node2.example.org 10.0.0.12
# then copy runner-node2.pem, runner-node2.key and ca.pem to the new host and point the
# runner at them (PIRUS_TLS_CERT, PIRUS_TLS_KEY, PIRUS_TLS_CLIENT_CERT, PIRUS_TLS_CLIENT_KEY,
# PIRUS_TLS_CA). ca.key never leaves the CA's host.
#
# Keys are EC P-256, written mode 0600; certificates last 825 days, the CA ten years.
set -euo pipefail

die() { printf 'tls.sh: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

make_ca() {
  local dir=$1
  mkdir -p "$dir"
  [ -s "$dir/ca.pem" ] && [ -s "$dir/ca.key" ] && return 0
  ( umask 077
    openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
      -keyout "$dir/ca.key" -out "$dir/ca.pem" -days 3650 -subj "/CN=Pirus deployment CA" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null ) \
    || die "openssl could not make the CA in $dir"
  chmod 644 "$dir/ca.pem"
}

issue() {
  local dir=$1 name=$2; shift 2
  [ $# -gt 0 ] || die "issue $name: name at least one host name or IP address"
  [ -s "$dir/ca.pem" ] && [ -s "$dir/ca.key" ] || die "no CA in $dir: run 'tls.sh ca $dir' first"
  case $name in *[!A-Za-z0-9._-]*|'') die "certificate name '$name': use letters, digits, '.', '_', '-'" ;; esac
  local sans="" host
  for host in "$@"; do
    if [[ $host =~ ^[0-9.]+$ || $host == *:* ]]; then sans+="IP:$host,"; else sans+="DNS:$host,"; fi
  done
  local ext csr
  ext=$(mktemp) csr=$(mktemp)
  printf 'subjectAltName=%s\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n' \
    "${sans%,}" > "$ext"
  ( umask 077
    openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
      -keyout "$dir/$name.key" -out "$csr" -subj "/CN=$name" 2>/dev/null &&
    openssl x509 -req -in "$csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
      -days 825 -sha256 -extfile "$ext" -out "$dir/$name.pem" 2>/dev/null ) \
    || { rm -f "$ext" "$csr"; die "openssl could not issue $name"; }
  rm -f "$ext" "$csr"
  chmod 644 "$dir/$name.pem"
}

[ $# -ge 2 ] || usage
case $1 in
  ca) make_ca "$2" ;;
  issue) [ $# -ge 4 ] || usage; shift; issue "$@" ;;
  *) usage ;;
esac
