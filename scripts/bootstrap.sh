#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine (as root) to run and test node-agent: Debian packages,
# a running dockerd, the local test images, the venv with the project. Idempotent: a second run
# only checks (about a second).
#
# Flags: --no-docker  packages and venv only (lint, unit tests): no dockerd, no images
#        --no-images  do not build the test images
#        --no-venv    do not create/update .venv
#        --runtime    the venv with the runtime dependencies only (make run): no test tools
#        --packaging  also the package build and check tools (make deb/rpm/test-packaging)
# Without --runtime the venv also gets the test tools (pytest, ruff, mypy: make test, make lint).
# Each step prints one line when it is done, with the seconds it took.
# Environment: BOOTSTRAP_DOCKER_WAIT_S (default 60): how long to wait for dockerd to answer.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)
VENV="$REPO/.venv"
TEST_IMAGE="node-agent-test/busybox"
DOCKERD_LOG=/var/log/node-agent-ci-dockerd.log
DOCKER_WAIT_S=${BOOTSTRAP_DOCKER_WAIT_S:-60}
WANT_DOCKER=1
WANT_VENV=1
WANT_IMAGES=1
WANT_PACKAGING=0
WANT_DEV=1
for arg in "$@"; do
  case "$arg" in
    --no-docker) WANT_DOCKER=0 WANT_IMAGES=0 ;;
    --no-images) WANT_IMAGES=0 ;;
    --no-venv) WANT_VENV=0 ;;
    --runtime) WANT_DEV=0 ;;
    --packaging) WANT_PACKAGING=1 ;;
    *) echo "bootstrap: unknown flag $arg (known: --no-docker --no-images --no-venv --runtime --packaging)" >&2; exit 2 ;;
  esac
done

say() { echo "bootstrap: $*"; }
# One line per step that did something, with its time: a first run takes minutes (packages,
# pip) and must not look hung.
step_started=$SECONDS
step() { step_started=$SECONDS; say "$* ..."; }
done_step() { say "$* ($((SECONDS - step_started)) s)"; }
die() { echo "bootstrap: $*" >&2; exit 1; }
# systemd is PID 1 (sd_booted()); `systemctl is-system-running` also exits non-zero on a
# merely "degraded" system, so its exit status is not the test.
systemd_booted() { [[ -d /run/systemd/system ]]; }

# -- Debian packages --------------------------------------------------------------------------
# gcc and libc6-dev: tests/integration/test_notify.py builds its static sd_notify helper.
# jq: tests/integration/test_nodectl_habits.py pipes nodectl's JSON to it, as scripts do.
# etcd-server: the etcd store's tests (make test-etcd) start throwaway etcd processes of it.
# docker-registry: tests/integration/test_pull_progress.py pulls from a throwaway registry.
PACKAGES=(docker.io iproute2 busybox-static python3-venv tmux socat procps ca-certificates curl
  gcc libc6-dev jq etcd-server docker-registry)
# packaging/build.sh and packaging/tests: dpkg-deb, lintian, rpmbuild and rpm (Debian's rpm),
# cloud-init's schema check, systemd-analyze (its units are never started here).
if ((WANT_PACKAGING)); then
  PACKAGES+=(dpkg-dev fakeroot lintian rpm cloud-init systemd)
fi
missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done
if ((${#missing[@]})); then
  [[ $(id -u) -eq 0 ]] || die "missing packages ${missing[*]}; run as root or install them"
  step "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Without systemd, docker.io's postinst runs /etc/init.d/docker through invoke-rc.d and fails
  # the install if that does not work. We start dockerd ourselves below, so deny service starts
  # for the duration of the install (the standard policy-rc.d mechanism), unless the machine
  # already has a policy.
  policy=
  if ! systemd_booted && [[ ! -e /usr/sbin/policy-rc.d ]]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\n# temporary, scripts/bootstrap.sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  apt_opts=(-o DPkg::Lock::Timeout=300 -qq) # a fresh cloud VM may be running unattended-upgrades
  apt-get "${apt_opts[@]}" update
  apt-get "${apt_opts[@]}" install -y --no-install-recommends "${missing[@]}" >/dev/null
  if [[ -n "$policy" ]]; then rm -f "$policy"; trap - EXIT; fi
  # Debian's etcd service, installed just now, starts at once on systemd (port 2379): the tests
  # start etcd processes of their own. An etcd the machine had before is left alone.
  if [[ " ${missing[*]} " == *" etcd-server "* ]] && systemd_booted; then
    systemctl disable --now etcd.service >/dev/null 2>&1 || true
  fi
  if [[ " ${missing[*]} " == *" docker-registry "* ]] && systemd_booted; then
    systemctl disable --now docker-registry.service >/dev/null 2>&1 || true
  fi
  done_step "installed ${missing[*]}"
fi
say "packages present (${PACKAGES[*]})"

# -- dockerd ----------------------------------------------------------------------------------
docker_up() { docker info >/dev/null 2>&1; }
# The pid in FILE is alive and is the process NAME (not a dead one or a recycled pid).
pidfile_alive() {
  local pid
  pid=$(cat "$1" 2>/dev/null || true)
  [[ "$pid" =~ ^[0-9]+$ ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" == "$2" ]]
}

# What /etc/init.d/docker would do before starting dockerd (we bypass it): mount the cgroup
# hierarchies if nothing mounted any (no systemd, a minimal init).
mount_cgroups() {
  grep -qE ' - cgroup2? ' /proc/self/mountinfo && return 0
  [[ -e /proc/cgroups && -d /sys/fs/cgroup ]] || return 0
  say "no cgroup filesystem mounted; mounting the cgroup v1 hierarchies"
  mountpoint -q /sys/fs/cgroup || mount -t tmpfs -o uid=0,gid=0,mode=0755 cgroup /sys/fs/cgroup
  local sys
  # shellcheck disable=SC2013 # one controller name per word
  for sys in $(awk '!/^#/ { if ($4 == 1) print $1 }' /proc/cgroups); do
    mkdir -p "/sys/fs/cgroup/$sys"
    mountpoint -q "/sys/fs/cgroup/$sys" ||
      mount -n -t cgroup -o "$sys" cgroup "/sys/fs/cgroup/$sys" || rmdir "/sys/fs/cgroup/$sys" || true
  done
}

start_dockerd_detached() {
  # A dockerd that does not answer may be starting or shutting down (e.g. after `pkill
  # dockerd` it stops its containers first): give it 20 s to answer or to go away.
  local _ pid
  for _ in $(seq 1 40); do
    docker_up && return 0
    pgrep -x dockerd >/dev/null || break
    sleep 0.5
  done
  for pid in $(pgrep -x dockerd || true); do
    say "ending dockerd pid $pid, which does not answer"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  # Left behind by a dockerd (or its containerd) that died without cleaning up: dockerd refuses
  # to start while /var/run/docker.pid names a live process, and that pid may have been reused.
  if [[ -e /var/run/docker.pid ]] && ! pidfile_alive /var/run/docker.pid dockerd; then
    say "removing stale /var/run/docker.pid and docker.sock"
    rm -f /var/run/docker.pid /var/run/docker.sock
  fi
  local cpid=/var/run/docker/containerd/containerd.pid
  if [[ -e $cpid ]] && ! pidfile_alive $cpid containerd; then rm -f $cpid; fi
  mount_cgroups
  say "starting dockerd (log: $DOCKERD_LOG)"
  setsid nohup dockerd >"$DOCKERD_LOG" 2>&1 </dev/null &
}

if ((WANT_DOCKER)) && ! docker_up; then
  if [[ -n "${DOCKER_HOST:-}" && "$DOCKER_HOST" != unix:///var/run/docker.sock &&
        "$DOCKER_HOST" != unix:///run/docker.sock ]]; then
    die "DOCKER_HOST=$DOCKER_HOST does not answer; not starting a local dockerd"
  fi
  [[ $(id -u) -eq 0 ]] || die "docker does not answer; run as root to start dockerd"
  if systemd_booted; then
    say "starting docker.service"
    systemctl start docker || true # the wait below reports what went wrong
  else
    start_dockerd_detached
  fi
  step_started=$SECONDS
  deadline=$((SECONDS + DOCKER_WAIT_S))
  until docker_up; do
    if ((SECONDS >= deadline)); then
      echo "bootstrap: dockerd did not answer within ${DOCKER_WAIT_S}s; last log lines:" >&2
      if systemd_booted; then
        journalctl -u docker --no-pager -n 50 >&2 || true
      else
        tail -n 50 "$DOCKERD_LOG" >&2 || true
      fi
      exit 1
    fi
    sleep 0.5
  done
fi
if ((WANT_DOCKER)); then
  done_step "docker ready (server $(docker version --format '{{.Server.Version}}'))"
fi

# -- test images (no registry: a rootfs from the host's static busybox) -------------------------
if ((WANT_IMAGES)); then
  if ! docker image inspect "$TEST_IMAGE:latest" >/dev/null 2>&1; then
    step "building $TEST_IMAGE:latest"
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
    printf 'root:x:0:\nnobody:x:65534:\n' >"$root/etc/group"
    tar -C "$root" -c . | docker import -c 'ENV PATH=/bin' -c 'CMD ["/bin/sh"]' - "$TEST_IMAGE:latest" >/dev/null
    rm -rf "$root"
    trap - EXIT
    docker tag "$TEST_IMAGE:latest" "$TEST_IMAGE:1"
    docker run --rm "$TEST_IMAGE:latest" true || die "the new image $TEST_IMAGE:latest does not run"
    done_step "built $TEST_IMAGE:latest (and :1) from $(readlink -f /bin/busybox)"
  fi
  docker image inspect "$TEST_IMAGE:1" >/dev/null 2>&1 || docker tag "$TEST_IMAGE:latest" "$TEST_IMAGE:1"
  say "test image $TEST_IMAGE:latest present"
fi

# -- venv ---------------------------------------------------------------------------------------
# Two stamps: the runtime dependencies (make run) and the test tools on top (make test, make
# lint). A stamp older than pyproject.toml means its step runs again.
pip_install() { # WHAT SPEC
  local pip_log="$VENV/pip-install.log"
  step "installing $1 into $VENV (pip; log: $pip_log)"
  if ! "$VENV/bin/python" -m pip install --disable-pip-version-check -q -e "$2" >"$pip_log" 2>&1; then
    tail -n 40 "$pip_log" >&2
    die "pip install failed (end of the log above; all of it in $pip_log)"
  fi
  done_step "installed $1"
}
if ((WANT_VENV)); then
  if [[ ! -x "$VENV/bin/python" ]]; then
    step "creating $VENV"
    python3 -m venv "$VENV"
    done_step "created $VENV"
  fi
  if [[ ! -f "$VENV/.installed-stamp" || pyproject.toml -nt "$VENV/.installed-stamp" ]]; then
    pip_install "the project and its runtime dependencies" .
    "$VENV/bin/python" -c 'import agent, aiohttp, docker, h2, yaml, cryptography'
    touch "$VENV/.installed-stamp"
  fi
  if ((WANT_DEV)) && [[ ! -f "$VENV/.dev-stamp" || pyproject.toml -nt "$VENV/.dev-stamp" ]]; then
    pip_install "the test tools (pytest, ruff, mypy, ...)" '.[test]'
    "$VENV/bin/python" -c 'import pytest, blockbuster'
    touch "$VENV/.dev-stamp"
  fi
  say "venv ready ($VENV, $("$VENV/bin/python" --version)$( ((WANT_DEV)) || echo ', runtime only'))"
fi
