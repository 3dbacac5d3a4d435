#!/usr/bin/env bash
# `make run`: a master (open policy) and an agent on this machine, the demo pod applied
# through nodectl. Ctrl-C stops both daemons; the pod keeps running (`make clean` removes it).
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO=/tmp/node-agent-demo
VENV=.venv/bin
MASTER_DIR="$DEMO/master"
PORT=16443

if [[ ! -f "$MASTER_DIR/pki/ca.key" ]]; then
  "$VENV/node-master" init --data-dir "$MASTER_DIR" --server-name 127.0.0.1 --listen "127.0.0.1:$PORT" >/dev/null
fi

PIN=$("$VENV/python" -c 'import sys
from agent.pki.core import certs_from_pem, spki_pin
print(spki_pin(certs_from_pem(open(sys.argv[1], "rb").read())[0]))' "$MASTER_DIR/pki/ca.crt")
export NODECTL_CONFIG="$MASTER_DIR/admin.conf"

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; echo; echo "demo stopped; the pod keeps running ('make clean' removes it)"; }
trap cleanup EXIT INT TERM

"$VENV/node-master" run --config "$MASTER_DIR/master.toml" >"$DEMO/master.log" 2>&1 &
pids+=($!)
"$VENV/node-agent" run --config examples/agent-demo.toml --manifest-dir "" \
  --master "https://127.0.0.1:$PORT" --ca-cert-hash "$PIN" >"$DEMO/agent.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 100); do
  "$VENV/nodectl" get nodes 2>/dev/null | grep -q ' Ready ' && break
  sleep 0.2
done
"$VENV/nodectl" apply -f examples/manifests/demo-pod.yaml
for _ in $(seq 1 100); do
  "$VENV/nodectl" get pods 2>/dev/null | grep -q 'Running' && break
  sleep 0.2
done
echo
"$VENV/nodectl" get nodes -o wide
echo
"$VENV/nodectl" get pods -o wide
cat <<EOT

The master and the agent run in the background (logs: $DEMO/master.log, $DEMO/agent.log).
In another shell:
  export NODECTL_CONFIG=$MASTER_DIR/admin.conf
  $VENV/nodectl get nodes,pods
  $VENV/nodectl describe pod demo-web
  $VENV/nodectl logs -f demo-web -c fetcher
  $VENV/nodectl exec -it demo-web -c web -- sh
  $VENV/nodectl port-forward demo-web 18080:8080      # then: curl -s 127.0.0.1:18080/
  curl -s http://127.0.0.1:10248/healthz
  curl -s --unix-socket $DEMO/state/api.sock http://local/v1/pods | python3 -m json.tool
Ctrl-C stops both daemons.
EOT
tail -f "$DEMO/agent.log"
