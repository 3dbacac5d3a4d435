#!/usr/bin/env bash
# `make run-ha`: several masters on this machine (issue 19 item 7): an etcd of its own (Debian's
# etcd-server, a data dir under HA_DIR, plain HTTP on loopback), three node-masters made the
# documented way (`node-master init` once, then copies of that data dir with only `listen`
# changed: docs/operations.md, "Several masters: replicas"), two agents listing the three
# masters, the demo pod applied through nodectl with the three masters in its config, and
# `nodectl get nodes -o wide` showing which master each node talks to (MASTER).
#
# Ctrl-C (or `make run-ha-stop` from another shell) stops everything it started, by process id,
# removes the demo nodes' containers and deletes HA_DIR (etcd's data with it): nothing is left.
# It fails fast and says why when a daemon exits or something does not come up in time.
#
# Environment:
#   HA_DIR          its files: etcd/, m0/ m1/ m2/, node-1/ node-2/, admin.conf, *.log
#                   (/tmp/node-agent-ha; deleted at the end)
#   HA_PORT         the first master's port on 127.0.0.1 (16453; the others the next two)
#   HA_ETCD_PORT    etcd's client port (32790; its peer port the next)
#   HA_NODE_PORT    the first agent's health port (10268; then its API port, then the second's)
#   HA_WAIT_S       how long each step may take (180)
# Flags: --until-running  tear down once the demo pod runs and the table is printed (tests)
#        --stop           stop a running demo (make run-ha-stop)
# shellcheck disable=SC2317 # functions run indirectly (traps, wait_until)
set -euo pipefail
cd "$(dirname "$0")/.."

UNTIL_RUNNING=0
STOP=0
for arg in "$@"; do
  case "$arg" in
    --until-running) UNTIL_RUNNING=1 ;;
    --stop) STOP=1 ;;
    *) echo "run-ha: unknown flag $arg (known: --until-running, --stop)" >&2; exit 2 ;;
  esac
done

HA=${HA_DIR:-/tmp/node-agent-ha}
PORT=${HA_PORT:-16453}
ETCD_PORT=${HA_ETCD_PORT:-32790}
NODE_PORT=${HA_NODE_PORT:-10268}
WAIT_S=${HA_WAIT_S:-180}
VENV=.venv/bin
POD=demo-web
MASTERS=(m0 m1 m2)
NODES=(ha-node-1 ha-node-2)
PREFIX=/node-agent-ha/

for var in PORT ETCD_PORT NODE_PORT; do
  value=${!var}
  if ! [[ "$value" =~ ^[0-9]{1,5}$ ]] || ((value < 1 || value > 65530)); then
    echo "run-ha: HA_$var=$value is not a port number (1-65530)" >&2
    exit 2
  fi
done
[[ "$WAIT_S" =~ ^[0-9]+$ ]] || { echo "run-ha: HA_WAIT_S=$WAIT_S is not a number of seconds" >&2; exit 2; }
case "$HA" in
  /*) ;;
  *) echo "run-ha: HA_DIR=$HA must be an absolute path (it is deleted at the end)" >&2; exit 2 ;;
esac

# Remove the demo nodes' containers (labelled with their node by the agent).
remove_containers() {
  local node
  docker info >/dev/null 2>&1 || return 0
  for node in "${NODES[@]}"; do
    docker ps -aq --filter "label=io.node-agent.node=$node" | xargs -r docker rm -f >/dev/null
  done
}

# Whether PID runs (kill -0 also answers for a zombie: "Z" in /proc/PID/stat until reaped).
alive() { kill -0 "$1" 2>/dev/null && [[ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]]; }

if ((STOP)); then
  # The running demo's own process: its trap tears everything down.
  if [[ -f "$HA/demo.pid" ]] && pid=$(cat "$HA/demo.pid") && kill -TERM "$pid" 2>/dev/null; then
    for _ in $(seq 1 $((WAIT_S * 5))); do
      alive "$pid" || { echo "run-ha: stopped"; exit 0; }
      sleep 0.2
    done
    echo "run-ha: the demo (pid $pid) did not stop within ${WAIT_S} s" >&2
    exit 1
  fi
  # No demo running: whatever an interrupted one left (the processes it recorded, by id).
  if [[ -f "$HA/pids" ]]; then
    while read -r pid; do kill -TERM "$pid" 2>/dev/null || true; done <"$HA/pids"
  fi
  remove_containers
  rm -rf "$HA"
  echo "run-ha: nothing running; cleaned up"
  exit 0
fi

command -v etcd >/dev/null || { echo "run-ha: no etcd binary (apt-get install etcd-server)" >&2; exit 1; }
if [[ -f "$HA/demo.pid" ]] && alive "$(cat "$HA/demo.pid")"; then
  echo "run-ha: a demo already runs (pid $(cat "$HA/demo.pid")): make run-ha-stop" >&2
  exit 1
fi
rm -rf "$HA"
mkdir -p "$HA"
chmod 0700 "$HA"
echo $$ >"$HA/demo.pid"

declare -A PIDS=()  # name -> pid, of every daemon started here
STOPPED=0
cleanup() {
  ((STOPPED)) && return
  STOPPED=1
  local name pids=()
  for name in "${!PIDS[@]}"; do
    kill -TERM "${PIDS[$name]}" 2>/dev/null && pids+=("${PIDS[$name]}")
  done
  ((${#pids[@]})) && wait "${pids[@]}" 2>/dev/null
  remove_containers
  rm -rf "$HA"
  echo
  echo "run-ha stopped: etcd, the masters and the agents ended, the demo pod's containers and $HA removed"
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM

# start NAME LOG COMMAND...: in the background, recorded for the clean-up.
start() {
  local name=$1 log=$2
  shift 2
  "$@" >"$log" 2>&1 &
  PIDS[$name]=$!
  echo "$!" >>"$HA/pids"
}

show_log() {
  echo "last lines of $1:" >&2
  tail -n 8 "$1" | cut -c1-400 | sed 's/^/  /' >&2
}

check_alive() {
  local name pid
  for name in "${!PIDS[@]}"; do
    pid=${PIDS[$name]}
    if ! alive "$pid"; then
      status=0
      wait "$pid" 2>/dev/null || status=$?
      unset "PIDS[$name]"
      echo "run-ha: $name exited (status $status)" >&2
      show_log "$HA/$name.log"
      exit 1
    fi
  done
}

wait_until() {
  local what=$1 deadline=$((SECONDS + WAIT_S))
  shift
  until "$@"; do
    check_alive
    if ((SECONDS >= deadline)); then
      echo "run-ha: $what: not within ${WAIT_S} s" >&2
      exit 1
    fi
    sleep 0.5
  done
}

# -- etcd ----------------------------------------------------------------------------------
ETCD_URL="http://127.0.0.1:$ETCD_PORT"
PEER_URL="http://127.0.0.1:$((ETCD_PORT + 1))"
echo "run-ha: etcd on $ETCD_URL (data in $HA/etcd)"
start etcd "$HA/etcd.log" etcd --name=ha --data-dir="$HA/etcd" \
  --listen-client-urls="$ETCD_URL" --advertise-client-urls="$ETCD_URL" \
  --listen-peer-urls="$PEER_URL" --initial-advertise-peer-urls="$PEER_URL" \
  --initial-cluster="ha=$PEER_URL" --log-level=warn --logger=zap
etcd_healthy() { curl -fsS --max-time 2 "$ETCD_URL/health" 2>/dev/null | grep -q '"true"'; }
wait_until "etcd answering" etcd_healthy

# -- masters: init once, then copies with only listen changed -------------------------------
URLS=()
for i in "${!MASTERS[@]}"; do URLS+=("https://127.0.0.1:$((PORT + i))"); done
"$VENV/node-master" init --data-dir "$HA/m0" --server-name 127.0.0.1 \
  --listen "127.0.0.1:$PORT" >/dev/null
cat >>"$HA/m0/master.toml" <<EOF
# make run-ha: the cluster's state in the demo's etcd (loopback, plain HTTP: a demo)
backend = "etcd"
endpoints = ["$ETCD_URL"]
prefix = "$PREFIX"
EOF
# ([store] is the rendered file's last table: the lines above are its keys.)
for i in 1 2; do
  cp -a "$HA/m0" "$HA/m$i"
  sed -i "s|^listen = \".*\"$|listen = \"127.0.0.1:$((PORT + i))\"|" "$HA/m$i/master.toml"
done
PIN=$("$VENV/python" -c 'import sys
from agent.pki.core import certs_from_pem, spki_pin
print(spki_pin(certs_from_pem(open(sys.argv[1], "rb").read())[0]))' "$HA/m0/pki/ca.crt")
for i in "${!MASTERS[@]}"; do
  name=${MASTERS[$i]}
  start "$name" "$HA/$name.log" "$VENV/node-master" run --config "$HA/$name/master.toml"
done
for name in "${MASTERS[@]}"; do
  serving() { grep -q 'msg="node master serving"' "$HA/$name.log"; }
  wait_until "master $name serving" serving
done
echo "run-ha: masters ${URLS[*]} (one CA: $PIN)"

# nodectl: the three masters, tried in order (docs/nodectl.md)
LIST=$(printf '"%s", ' "${URLS[@]}")
sed "s|^server = \".*\"$|server = [${LIST%, }]|" "$HA/m0/admin.conf" >"$HA/admin.conf"
chmod 0600 "$HA/admin.conf"
export NODECTL_CONFIG="$HA/admin.conf"

# -- agents -----------------------------------------------------------------------------------
MASTER_LIST=$(IFS=,; echo "${URLS[*]}")
for i in "${!NODES[@]}"; do
  node=${NODES[$i]}
  start "$node" "$HA/$node.log" "$VENV/node-agent" run --config examples/agent-demo.toml \
    --manifest-dir "" --node-name "$node" --state-dir "$HA/$node" \
    --health-addr "127.0.0.1:$((NODE_PORT + 2 * i))" --api-addr "127.0.0.1:$((NODE_PORT + 2 * i + 1))" \
    --master "$MASTER_LIST" --ca-cert-hash "$PIN"
done
nodes_ready() {
  local ready
  ready=$("$VENV/nodectl" get nodes --no-headers 2>/dev/null | awk '$2 ~ /^Ready/' | wc -l)
  ((ready == ${#NODES[@]}))
}
wait_until "nodes ${NODES[*]} Ready" nodes_ready

"$VENV/nodectl" apply -f examples/manifests/demo-pod.yaml
pod_running() { [[ "$("$VENV/nodectl" get pod "$POD" --no-headers 2>/dev/null | awk '{print $3}')" == Running ]]; }
wait_until "pod $POD Running" pod_running
echo
"$VENV/nodectl" get nodes -o wide
echo
"$VENV/nodectl" get pods -o wide
if ((UNTIL_RUNNING)); then
  exit 0
fi
cat <<EOT

etcd, three masters and two agents run in the background (logs: $HA/*.log).
In another shell:
  export NODECTL_CONFIG=$HA/admin.conf      # the three masters
  $VENV/nodectl get nodes -o wide            # MASTER: the master each node talks to
  $VENV/nodectl -v exec $POD -c web -- hostname
  kill -STOP <a master's pid: $HA/pids>     # agents on it move within 15 s; nodectl -v says so
Ctrl-C or 'make run-ha-stop' stops everything and deletes $HA.
EOT
# Until Ctrl-C (the trap) or a daemon exits (then say which and why).
while true; do
  check_alive
  sleep 1
done
