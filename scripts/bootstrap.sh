#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine (as root) to run and test node-agent:
# Debian packages, a running dockerd, the local test images, the venv with the project.
# Idempotent: a second run only checks. Flags: --no-venv, --no-images.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)
VENV="$REPO/.venv"
TEST_IMAGE="node-agent-test/busybox"
DOCKERD_LOG=/var/log/node-agent-ci-dockerd.log
DOCKER_WAIT_S=60
WANT_VENV=1
WANT_IMAGES=1
for arg in "$@"; do
  case "$arg" in
    --no-venv) WANT_VENV=0 ;;
    --no-images) WANT_IMAGES=0 ;;
    *) echo "bootstrap: unknown flag $arg" >&2; exit 2 ;;
  esac
done

say() { echo "bootstrap: $*"; }

# -- Debian packages --------------------------------------------------------------------------
PACKAGES=(docker.io iproute2 busybox-static python3-venv tmux socat procps ca-certificates curl)
missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "bootstrap: missing packages ${missing[*]}; run as root or install them" >&2
    exit 1
  fi
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
say "packages present (${PACKAGES[*]})"

# -- dockerd ----------------------------------------------------------------------------------
docker_up() { docker info >/dev/null 2>&1; }
if ! docker_up; then
  if [[ -d /run/systemd/system ]] && systemctl start docker 2>/dev/null; then
    say "started docker.service"
  else
    # No systemd as PID 1 (containers, CI sandboxes): run dockerd detached ourselves.
    # A dockerd that does not answer may be shutting down: give it time to go, then end it.
    for _ in $(seq 1 40); do
      pgrep -x dockerd >/dev/null || break
      sleep 0.5
    done
    if pgrep -x dockerd >/dev/null; then
      say "ending a dockerd that does not answer"
      pkill -9 -x dockerd || true
      sleep 1
    fi
    if [[ -f /var/run/docker.pid ]] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
      rm -f /var/run/docker.pid /var/run/docker.sock
    fi
    say "starting dockerd (log: $DOCKERD_LOG)"
    setsid nohup dockerd >"$DOCKERD_LOG" 2>&1 </dev/null &
  fi
  deadline=$((SECONDS + DOCKER_WAIT_S))
  until docker_up; do
    if ((SECONDS >= deadline)); then
      echo "bootstrap: dockerd did not answer within ${DOCKER_WAIT_S}s; last log lines:" >&2
      tail -n 50 "$DOCKERD_LOG" >&2 || true
      exit 1
    fi
    sleep 0.5
  done
fi
say "docker ready (server $(docker version --format '{{.Server.Version}}'))"

# -- test images (no registry: a rootfs from the host's static busybox) -------------------------
if ((WANT_IMAGES)); then
  if ! docker image inspect "$TEST_IMAGE:latest" >/dev/null 2>&1; then
    root=$(mktemp -d)
    trap 'rm -rf "$root"' EXIT
    mkdir -p "$root"/{bin,etc,tmp,proc,sys,dev,var/www,root}
    chmod 1777 "$root/tmp"
    cp /bin/busybox "$root/bin/busybox"
    for applet in $("$root/bin/busybox" --list); do
      # --list includes busybox itself; linking it to itself would destroy the binary.
      [[ "$applet" == busybox ]] || ln -sf busybox "$root/bin/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
    tar -C "$root" -c . | docker import -c 'ENV PATH=/bin' -c 'CMD ["/bin/sh"]' - "$TEST_IMAGE:latest" >/dev/null
    docker tag "$TEST_IMAGE:latest" "$TEST_IMAGE:1"
    docker run --rm "$TEST_IMAGE:latest" true
    say "built $TEST_IMAGE:latest from $(readlink -f /bin/busybox)"
  fi
  docker image inspect "$TEST_IMAGE:1" >/dev/null 2>&1 || docker tag "$TEST_IMAGE:latest" "$TEST_IMAGE:1"
  say "test image $TEST_IMAGE present"
fi

# -- venv ---------------------------------------------------------------------------------------
if ((WANT_VENV)); then
  [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
  if [[ ! -f "$VENV/.installed-stamp" || pyproject.toml -nt "$VENV/.installed-stamp" ]]; then
    say "installing the project into $VENV"
    pip_log="$VENV/pip-install.log"
    if ! "$VENV/bin/python" -m pip install -q -e '.[test]' >"$pip_log" 2>&1; then
      cat "$pip_log" >&2
      exit 1
    fi
    "$VENV/bin/python" -c 'import agent, aiohttp, docker, h2, pytest, blockbuster'
    touch "$VENV/.installed-stamp"
  fi
  say "venv ready ($VENV)"
fi
