#!/usr/bin/env bash
# `make run`: a master (open policy) and an agent on this machine, the demo pod applied through
# nodectl, then the agent's log in the foreground. Ctrl-C stops both daemons; the pod keeps
# running (`make clean` removes it).
#
# It fails fast and says why: when the master or the agent exits (the master's port taken, a
# bad config, dockerd gone), at any point, it prints the error and the last lines of that
# process's log and exits 1. Nothing waits longer than DEMO_WAIT_S.
#
# Environment:
#   DEMO_PORT         the master's port on 127.0.0.1 (16443)
#   DEMO_DIR          the demo's files: master/ (CA, admin.conf), state/, *.log (/tmp/node-agent-demo)
#   DEMO_NODE         the node's name (demo-node)
#   DEMO_HEALTH_PORT  the agent's health port on 127.0.0.1 (10248)
#   DEMO_API_PORT     the agent's TLS API port on 127.0.0.1 (10250)
#   DEMO_WAIT_S       how long the master, the node and the pod each may take to come up (120)
# Flag: --until-running  stop both daemons once the demo pod runs and exit 0 (tests)
# shellcheck disable=SC2317 # functions run indirectly (traps, wait_until)
set -euo pipefail
cd "$(dirname "$0")/.."

UNTIL_RUNNING=0
for arg in "$@"; do
  case "$arg" in
    --until-running) UNTIL_RUNNING=1 ;;
    *) echo "demo: unknown flag $arg (known: --until-running)" >&2; exit 2 ;;
  esac
done

PORT=${DEMO_PORT:-16443}
DEMO=${DEMO_DIR:-/tmp/node-agent-demo}
NODE=${DEMO_NODE:-demo-node}
HEALTH_PORT=${DEMO_HEALTH_PORT:-10248}
API_PORT=${DEMO_API_PORT:-10250}
WAIT_S=${DEMO_WAIT_S:-120}
VENV=.venv/bin
POD=demo-web

for var in PORT HEALTH_PORT API_PORT; do
  value=${!var}
  if ! [[ "$value" =~ ^[0-9]{1,5}$ ]] || ((value < 1 || value > 65535)); then
    echo "demo: DEMO_$var=$value is not a port number (1-65535)" >&2
    exit 2
  fi
done
[[ "$WAIT_S" =~ ^[0-9]+$ ]] || { echo "demo: DEMO_WAIT_S=$WAIT_S is not a number of seconds" >&2; exit 2; }
mkdir -p "$DEMO"
chmod 0700 "$DEMO"
DEMO=$(cd "$DEMO" && pwd)
MASTER_DIR="$DEMO/master"
MASTER_LOG="$DEMO/master.log"
AGENT_LOG="$DEMO/agent.log"

if [[ ! -f "$MASTER_DIR/pki/ca.key" ]]; then
  "$VENV/node-master" init --data-dir "$MASTER_DIR" --server-name 127.0.0.1 \
    --listen "127.0.0.1:$PORT" >/dev/null
fi
# A demo directory made for another port: the master listens where asked (--listen) and
# nodectl's config follows (its server line; the certificates do not name a port).
"$VENV/python" - "$MASTER_DIR/admin.conf" "https://127.0.0.1:$PORT" <<'EOF'
import re, sys
path, server = sys.argv[1], sys.argv[2]
text = open(path).read()
new = re.sub(r'(?m)^server = ".*"$', f'server = "{server}"', text, count=1)
if new != text:
    open(path, "w").write(new)
EOF
PIN=$("$VENV/python" -c 'import sys
from agent.pki.core import certs_from_pem, spki_pin
print(spki_pin(certs_from_pem(open(sys.argv[1], "rb").read())[0]))' "$MASTER_DIR/pki/ca.crt")
export NODECTL_CONFIG="$MASTER_DIR/admin.conf"

MASTER_PID=
AGENT_PID=
TAIL_PID=
POD_RUNNING=0
STOPPED=0
# Once, whichever of Ctrl-C, a failure or the end comes first (the EXIT trap follows the others).
cleanup() {
  ((STOPPED)) && return
  STOPPED=1
  local pids=()
  for pid in $TAIL_PID $AGENT_PID $MASTER_PID; do
    kill "$pid" 2>/dev/null && pids+=("$pid")
  done
  ((${#pids[@]})) && wait "${pids[@]}" 2>/dev/null
  echo
  if ((POD_RUNNING)); then
    echo "demo stopped; the pod $POD keeps running ('make clean' removes it)"
  else
    echo "demo stopped"
  fi
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM

# The last lines of a log, each cut short (a traceback is one long line in the kv format).
show_log() {
  echo "last lines of $1:" >&2
  tail -n 8 "$1" | cut -c1-400 | sed 's/^/  /' >&2
}

# NAME died: its exit status, its error (the last error="…" of its log), the end of its log;
# exit 1. STATUS when already reaped (wait -n), else from wait.
died() {
  local name=$1 pid=$2 log=$3 status=${4:-} error
  if [[ -z "$status" ]]; then
    status=0
    wait "$pid" 2>/dev/null || status=$?
  fi
  [[ $name == master ]] && MASTER_PID= || AGENT_PID=
  error=$(sed -n 's/.* error="\(.*\)"$/\1/p' "$log" | tail -n 1)
  echo >&2
  echo "demo: the $name exited (status $status)${error:+: $error}" >&2
  show_log "$log"
  exit 1
}

check_alive() {
  # kill -0 also answers for a zombie: a dead child is "Z" in /proc/PID/stat until reaped.
  local pid name log
  for name in master agent; do
    if [[ $name == master ]]; then pid=$MASTER_PID log=$MASTER_LOG; else pid=$AGENT_PID log=$AGENT_LOG; fi
    [[ -n "$pid" ]] || continue
    if ! kill -0 "$pid" 2>/dev/null || [[ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" == Z ]]; then
      died "$name" "$pid" "$log"
    fi
  done
}

# Poll CONDITION (a command) until it holds, failing fast when a daemon dies and after WAIT_S.
wait_until() {
  local what=$1 deadline=$((SECONDS + WAIT_S))
  shift
  until "$@"; do
    check_alive
    if ((SECONDS >= deadline)); then
      echo "demo: $what: not within ${WAIT_S} s" >&2
      show_log "$MASTER_LOG"
      show_log "$AGENT_LOG"
      exit 1
    fi
    sleep 0.2
  done
}

master_serving() { grep -q 'msg="node master serving"' "$MASTER_LOG"; }
node_ready() { [[ "$("$VENV/nodectl" get node "$NODE" --no-headers 2>/dev/null | awk '{print $2}')" == Ready* ]]; }
pod_running() { [[ "$("$VENV/nodectl" get pod "$POD" --no-headers 2>/dev/null | awk '{print $3}')" == Running ]]; }

echo "demo: master on 127.0.0.1:$PORT, node $NODE, files in $DEMO"
"$VENV/node-master" run --config "$MASTER_DIR/master.toml" --listen "127.0.0.1:$PORT" \
  >"$MASTER_LOG" 2>&1 &
MASTER_PID=$!
wait_until "the master serving on 127.0.0.1:$PORT" master_serving

"$VENV/node-agent" run --config examples/agent-demo.toml --manifest-dir "" \
  --node-name "$NODE" --state-dir "$DEMO/state" \
  --health-addr "127.0.0.1:$HEALTH_PORT" --api-addr "127.0.0.1:$API_PORT" \
  --master "https://127.0.0.1:$PORT" --ca-cert-hash "$PIN" >"$AGENT_LOG" 2>&1 &
AGENT_PID=$!
wait_until "node $NODE Ready" node_ready

"$VENV/nodectl" apply -f examples/manifests/demo-pod.yaml
wait_until "pod $POD Running" pod_running
POD_RUNNING=1
echo
"$VENV/nodectl" get nodes -o wide
echo
"$VENV/nodectl" get pods -o wide
if ((UNTIL_RUNNING)); then
  exit 0
fi
cat <<EOT

The master and the agent run in the background (logs: $MASTER_LOG, $AGENT_LOG).
In another shell:
  export NODECTL_CONFIG=$MASTER_DIR/admin.conf
  $VENV/nodectl get nodes,pods
  $VENV/nodectl describe pod $POD
  $VENV/nodectl logs -f $POD -c fetcher
  $VENV/nodectl exec -it $POD -c web -- sh
  $VENV/nodectl port-forward $POD 18080:8080      # then: curl -s 127.0.0.1:18080/
  curl -s http://127.0.0.1:$HEALTH_PORT/healthz
  curl -s --unix-socket $DEMO/state/api.sock http://local/v1/pods | python3 -m json.tool
Ctrl-C stops both daemons. The agent's log follows.
EOT
tail -n +1 -f "$AGENT_LOG" &
TAIL_PID=$!
# Until Ctrl-C (the trap), or until a daemon exits: then say which and why.
status=0
wait -n -p gone "$MASTER_PID" "$AGENT_PID" || status=$?
if [[ "${gone:-}" == "$MASTER_PID" ]]; then
  died master "$MASTER_PID" "$MASTER_LOG" "$status"
fi
died agent "$AGENT_PID" "$AGENT_LOG" "$status"
