#!/usr/bin/env bash
# `systemd-analyze verify` of the node-agent and node-master units; fails on any message except
# node-agent.service's KillMode=process warning (systemd >= 253; intended: docs/packaging.md).
#   verify-units.sh [UNIT_FILE...]  unit files (default: systemd/*.service of this tree), checked
#                                   in a scratch root holding the host's units and stubs of the
#                                   packages' commands, so no package needs to be installed
#   verify-units.sh --installed     the installed units as they are (a host with the packages,
#                                   e.g. the system-test image)
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v systemd-analyze >/dev/null || { echo "verify-units: no systemd-analyze" >&2; exit 2; }

if [[ "${1:-}" == --installed ]]; then
  out=$(systemd-analyze verify node-agent.service node-master.service 2>&1) || rc=$?
else
  units=("$@")
  ((${#units[@]})) || units=(systemd/node-agent.service systemd/node-master.service)
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  mkdir -p "$root/lib/systemd" "$root/usr/bin" "$root/bin" "$root/etc"
  cp -a /lib/systemd/system "$root/lib/systemd/"
  cp /bin/kill "$root/bin/kill"
  for cmd in node-agent node-master; do
    printf '#!/bin/sh\n' >"$root/usr/bin/$cmd"
    chmod 0755 "$root/usr/bin/$cmd"
  done
  names=()
  for unit in "${units[@]}"; do
    cp "$unit" "$root/lib/systemd/system/"
    names+=("$(basename "$unit")")
  done
  out=$(systemd-analyze verify --root="$root" "${names[@]}" 2>&1) || rc=$?
fi
unexpected=$(grep -v '^node-agent\.service: .*KillMode=process' <<<"$out" | grep -v '^$' || true)
if [[ -n "$unexpected" || ${rc:-0} -ne 0 ]]; then
  echo "verify-units: systemd-analyze verify (exit ${rc:-0}):" >&2
  echo "$out" >&2
  exit 1
fi
echo "verify-units: no warnings ($(systemd-analyze --version | head -n1))"
