#!/bin/sh
# fleet-ca.sh - a small fleet CA for node-master's client-cert trust rule (see certs/README.md).
#
#   fleet-ca.sh init DIR                      an ECDSA P-256 CA: DIR/ca.key (0600), DIR/ca.crt
#   fleet-ca.sh issue DIR NODE_NAME [--days N] a client certificate for one node:
#                                             DIR/nodes/NODE_NAME.key (0600), .crt
#
# The master admits a node presenting a certificate that the CA in client_ca_file signed
# directly, valid now, with clientAuth among its extended key usages when it has any, and
# (client_cert_name_must_match, the default) the node's name as its CN or a DNS SAN.
# Exit status: 0 done, 1 refused (an existing CA or certificate, openssl failing), 2 bad usage.
set -eu
umask 077

PROG=${0##*/}
CA_DAYS=3650          # the fleet CA's lifetime, days
NODE_DAYS_DEFAULT=365 # a node certificate's default lifetime, days
NODE_DAYS_MAX=3650    # the longest --days accepted, days
NODE_NAME_MAX=52      # the agent's bound: its certificate's CN, system:node:<name>, holds 64

usage() {
    cat >&2 <<EOF
usage: $PROG init DIR
       $PROG issue DIR NODE_NAME [--days N]   (N: 1-$NODE_DAYS_MAX, default $NODE_DAYS_DEFAULT)
EOF
    exit 2
}

die() { # status message...
    status=$1
    shift
    printf '%s: %s\n' "$PROG" "$*" >&2
    exit "$status"
}

need_openssl() {
    command -v openssl >/dev/null 2>&1 ||
        die 1 "openssl is not installed (Debian/Ubuntu: apt-get install openssl; RHEL: dnf install openssl)"
}

# A node name as the agent takes it: a DNS-1123 subdomain (lowercase alphanumerics, '-' and '.',
# each dot-separated part starting and ending alphanumeric) of at most 52 characters.
check_node_name() {
    name=$1
    case $name in
    '') die 2 "node name is empty" ;;
    esac
    if [ "${#name}" -gt "$NODE_NAME_MAX" ]; then
        die 2 "node name '$name' is longer than $NODE_NAME_MAX characters, the most a node name may have"
    fi
    # Exactly one line of allowed characters, every part alphanumeric at both ends.
    if [ "$(printf '%s\n' "$name" | wc -l)" -ne 1 ] ||
        ! printf '%s\n' "$name" | grep -Eqx '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*'; then
        die 2 "node name '$name' is not a valid DNS-1123 subdomain (lowercase alphanumerics, '-' and '.', each dot-separated part starting and ending alphanumeric)"
    fi
}

check_days() {
    case $1 in
    '' | *[!0-9]*) die 2 "--days '$1' is not a whole number of days" ;;
    esac
    # Strip leading zeros without arithmetic on a possibly huge string.
    days=$(printf '%s' "$1" | sed 's/^0*//')
    if [ -z "$days" ] || [ "${#days}" -gt 5 ] || [ "$days" -gt "$NODE_DAYS_MAX" ]; then
        die 2 "--days '$1' is out of range (1-$NODE_DAYS_MAX)"
    fi
}

abspath() { # an existing directory's absolute path
    (cd "$1" && pwd -P)
}

cmd_init() {
    [ $# -eq 1 ] || usage
    dir=$1
    need_openssl
    if [ -e "$dir" ] && [ -n "$(ls -A "$dir" 2>/dev/null || echo unreadable)" ]; then
        die 1 "$dir already exists and is not empty: refusing to overwrite a CA (pick a new directory)"
    fi
    mkdir -p "$dir"
    chmod 0700 "$dir"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/ca.key" 2>/dev/null ||
        die 1 "openssl could not generate the CA key in $dir"
    chmod 0600 "$dir/ca.key"
    openssl req -x509 -new -sha256 -key "$dir/ca.key" -days "$CA_DAYS" \
        -subj "/CN=node-agent fleet CA $(date -u +%Y-%m-%d)" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash" \
        -out "$dir/ca.crt" ||
        die 1 "openssl could not create the CA certificate in $dir"
    chmod 0644 "$dir/ca.crt"
    mkdir -p "$dir/nodes"
    chmod 0700 "$dir/nodes"
    abs=$(abspath "$dir")
    cat <<EOF
Fleet CA created (ECDSA P-256, $CA_DAYS days):
  $abs/ca.key   private key (0600): keep it here, offline if you can; never copy it to a node
  $abs/ca.crt   certificate

On the master, copy ca.crt (e.g. to /etc/node-master/fleet-ca.pem) and set in master.toml:
  [registration]
  trust = ["client-cert"]            # or add "client-cert" to your existing list
  client_ca_file = "/etc/node-master/fleet-ca.pem"
  client_cert_name_must_match = true
then reload the master (SIGHUP) or restart it.

Next, for each node:  $PROG issue $abs NODE_NAME
EOF
}

cmd_issue() {
    [ $# -ge 2 ] || usage
    dir=$1
    name=$2
    shift 2
    days=$NODE_DAYS_DEFAULT
    while [ $# -gt 0 ]; do
        case $1 in
        --days)
            [ $# -ge 2 ] || die 2 "--days needs a value"
            check_days "$2"
            shift 2
            ;;
        --days=*)
            check_days "${1#--days=}"
            shift
            ;;
        *) die 2 "unknown argument '$1'" ;;
        esac
    done
    check_node_name "$name"
    need_openssl
    if [ ! -f "$dir/ca.key" ] || [ ! -f "$dir/ca.crt" ]; then
        die 1 "$dir holds no fleet CA (ca.key and ca.crt): run '$PROG init $dir' first"
    fi
    mkdir -p "$dir/nodes"
    chmod 0700 "$dir/nodes"
    key=$dir/nodes/$name.key
    crt=$dir/nodes/$name.crt
    if [ -e "$key" ] || [ -e "$crt" ]; then
        die 1 "$crt or $key already exists: refusing to overwrite (remove both to re-issue)"
    fi
    work=$(mktemp -d "${TMPDIR:-/tmp}/fleet-ca.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    cat >"$work/ext" <<EOF
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = DNS:$name
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/key" 2>/dev/null ||
        die 1 "openssl could not generate the node key"
    openssl req -new -sha256 -key "$work/key" -subj "/CN=$name" -out "$work/csr" ||
        die 1 "openssl could not create the certificate request"
    openssl x509 -req -sha256 -in "$work/csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
        -set_serial "0x$(openssl rand -hex 16)" -days "$days" -extfile "$work/ext" \
        -out "$work/crt" 2>/dev/null ||
        die 1 "openssl could not sign the node certificate with $dir/ca.key"
    chmod 0600 "$work/key"
    chmod 0644 "$work/crt"
    mv "$work/key" "$key"
    mv "$work/crt" "$crt"
    abs=$(abspath "$dir/nodes")
    cat <<EOF
Client certificate for node '$name' ($days days, CN and DNS SAN '$name', clientAuth):
  $abs/$name.crt
  $abs/$name.key   private key (0600)

Copy both to the node (e.g. /etc/node-agent/fleet.crt and /etc/node-agent/fleet.key, 0600,
owned by the user node-agent runs as) and set in its agent.toml:
  node_name = "$name"
  bootstrap_cert = "/etc/node-agent/fleet.crt"
  bootstrap_key = "/etc/node-agent/fleet.key"
(or: node-agent run --bootstrap-cert ... --bootstrap-key ...). The agent presents it only to
register; the master then issues the node its own certificate.
EOF
}

[ $# -ge 1 ] || usage
command=$1
shift
case $command in
init) cmd_init "$@" ;;
issue) cmd_issue "$@" ;;
-h | --help | help) usage ;;
*) die 2 "unknown command '$command' (init or issue)" ;;
esac
