#!/usr/bin/env bash
# Fills in packaging/cloud-init/user-data.yaml's four inputs and prints the user-data:
#   render.sh --master URL --ca-pin sha256:HEX --token ID.SECRET [--label K=V]... [--package P]
# --package: what to install instead of `node-agent` from the apt sources (a local .deb path).
# The output is checked with `cloud-init schema --config-file` when cloud-init is installed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
master= pin= token= package= labels=()
die() { echo "render.sh: $*" >&2; exit 2; }
while (($#)); do
  case "$1" in
    --master) master=${2:?}; shift 2 ;;
    --ca-pin) pin=${2:?}; shift 2 ;;
    --token) token=${2:?}; shift 2 ;;
    --label) labels+=("${2:?}"); shift 2 ;;
    --package) package=${2:?}; shift 2 ;;
    *) die "unknown argument $1 (--master --ca-pin --token --label --package)" ;;
  esac
done
url_re='^https://[][A-Za-z0-9.:-]+$'
[[ "$master" =~ $url_re ]] || die "--master: https://HOST:PORT, got '$master'"
[[ "$pin" =~ ^sha256:[0-9a-f]{64}$ ]] || die "--ca-pin: sha256:<64 hex digits>, got '$pin'"
[[ "$token" =~ ^[a-z0-9]{6}\.[a-z0-9]{16}$ ]] || die "--token: ID.SECRET ([a-z0-9]{6}.[a-z0-9]{16})"
label_list=
for l in "${labels[@]}"; do
  [[ "$l" =~ ^[A-Za-z0-9./_-]+=[A-Za-z0-9._-]*$ ]] || die "--label: KEY=VALUE, got '$l'"
  label_list+="${label_list:+, }\"$l\""
done
[[ -z "$package" || "$package" =~ ^[A-Za-z0-9./_+:~-]+$ ]] || die "--package: a name or a path"
sed -e "s|@MASTER_URL@|$master|" -e "s|@CA_PIN@|$pin|" -e "s|@JOIN_TOKEN@|$token|" \
  -e "s|\[\"@NODE_LABELS@\"\]|[$label_list]|" \
  -e "${package:+s|^  - node-agent\$|  - $package|}" "$here/user-data.yaml"
