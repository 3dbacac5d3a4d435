#!/usr/bin/env bash
# Builds the Debian bookworm image that boots systemd as PID 1, for the package tests
# (tests/system/pkg/): debootstrap from Debian's mirror (no container registry), then
# `docker import` as node-agent-test/bookworm-systemd:<hash>, where <hash> covers this script,
# packages.txt and cloud-test.cfg. Prints the image reference on stdout (the last line);
# progress goes to stderr.
#
# Cached twice: nothing is done when the tagged image exists; otherwise the rootfs tarball
# $CACHE_DIR/bookworm-systemd-<hash>.tar (outside the repository, so a fresh CI clone reuses
# it) is imported without debootstrap. Older tags and tarballs of this image are removed.
#
# Environment: NODE_AGENT_CI_CACHE (default /var/cache/node-agent-ci), DEBIAN_MIRROR (default
# http://deb.debian.org/debian). Needs root (debootstrap, docker).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CACHE_DIR=${NODE_AGENT_CI_CACHE:-/var/cache/node-agent-ci}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
REPO=node-agent-test/bookworm-systemd

say() { echo "image: $*" >&2; }
die() { echo "image: FAILED: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "needs root (debootstrap, docker)"
docker info >/dev/null 2>&1 || die "no Docker engine answers (run scripts/bootstrap.sh)"

# The content hash: this script, the package list and the files copied in, so a change of any
# builds anew.
HASH=$(cat "$HERE/build.sh" "$HERE/packages.txt" "$HERE/cloud-test.cfg" | sha256sum | cut -c1-12)
TAG="$REPO:$HASH"
TARBALL="$CACHE_DIR/bookworm-systemd-$HASH.tar"

if docker image inspect "$TAG" >/dev/null 2>&1; then
  say "$TAG exists"
  echo "$TAG"
  exit 0
fi

install -d -m 0755 "$CACHE_DIR"
# One build at a time (two CI runs, or a developer and CI, on one machine).
exec 9>"$CACHE_DIR/.bookworm-systemd.lock"
flock 9
if docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "$TAG"
  exit 0
fi

if [[ ! -s "$TARBALL" ]]; then
  if ! command -v debootstrap >/dev/null; then
    say "installing debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=300 -qq update
    apt-get -o DPkg::Lock::Timeout=300 -qq install -y --no-install-recommends debootstrap >/dev/null
  fi
  mapfile -t packages < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$HERE/packages.txt")
  ROOT=$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")
  LOG="$CACHE_DIR/build-$HASH.log"
  # shellcheck disable=SC2064 # expand ROOT now
  trap "umount '$ROOT/proc' 2>/dev/null || true; rm -rf --one-file-system '$ROOT'" EXIT
  start=$SECONDS
  # Two steps: debootstrap lays a minimal base (its own dependency ordering fails on packages
  # such as python3-cryptography when they are --include'd), then apt inside the chroot installs
  # the list, ordering and configuring as on any Debian host.
  say "debootstrap $SUITE (minbase) from $MIRROR into $ROOT (log $LOG)"
  debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR" >"$LOG" 2>&1 ||
    { tail -n 30 "$LOG" >&2; die "debootstrap (log $LOG)"; }
  say "apt-get install ${packages[*]}"
  mount -t proc proc "$ROOT/proc"
  # No daemon starts while packages install (dbus, systemd units): the standard policy-rc.d.
  printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
  chmod 755 "$ROOT/usr/sbin/policy-rc.d"
  chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    sh -c "apt-get -qq update && apt-get -qq install -y --no-install-recommends ${packages[*]}" >>"$LOG" 2>&1 ||
    { tail -n 30 "$LOG" >&2; die "apt-get install in the chroot (log $LOG)"; }
  rm -f "$ROOT/usr/sbin/policy-rc.d"
  chroot "$ROOT" apt-get -qq clean
  umount "$ROOT/proc"
  say "rootfs built in $((SECONDS - start)) s"

  # -- configuration for a container that boots systemd -------------------------------------
  # machine-id empty: systemd makes a fresh one per boot, so two containers of this image
  # (agent and master) never share one.
  : >"$ROOT/etc/machine-id"
  rm -f "$ROOT/var/lib/dbus/machine-id"
  # Units that have nothing to do in a container, or that wait for hardware it lacks.
  for unit in getty@tty1.service console-getty.service serial-getty@.service \
    systemd-udevd.service systemd-udev-trigger.service systemd-udev-settle.service \
    systemd-firstboot.service systemd-timesyncd.service systemd-networkd-wait-online.service \
    apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer \
    sys-kernel-debug.mount sys-kernel-tracing.mount sys-kernel-config.mount \
    dev-hugepages.mount dev-mqueue.mount sys-fs-fuse-connections.mount \
    cloud-init-local.service cloud-init.service cloud-config.service cloud-final.service \
    cloud-init.target; do
    ln -sf /dev/null "$ROOT/etc/systemd/system/$unit"
  done
  # cloud-init is applied by the tests (cloud-init's CLI against a NoCloud seed), never at boot:
  # docker's network is up before systemd, there is no datasource to discover.
  touch "$ROOT/etc/cloud/cloud-init.disabled"
  install -m 0644 "$HERE/cloud-test.cfg" "$ROOT/etc/cloud/cloud.cfg.d/90-node-agent-test.cfg"
  # The journal stays in memory (tests read it with journalctl while the container runs).
  install -d "$ROOT/etc/systemd/journald.conf.d"
  printf '[Journal]\nStorage=volatile\nRateLimitBurst=0\n' >"$ROOT/etc/systemd/journald.conf.d/test.conf"
  # An offline host: no apt source and no package lists. `apt-get update` (cloud-init runs it
  # before installing `packages:`) succeeds at once, and `apt-get install ./node-agent_*.deb`
  # works because every Depends of the packages is in packages.txt, hence installed.
  : >"$ROOT/etc/apt/sources.list"
  rm -rf "$ROOT"/etc/apt/sources.list.d/* "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin \
    "$ROOT"/var/cache/apt/archives/*.deb
  echo "node-agent-test-$HASH" >"$ROOT/etc/hostname"

  say "packing $TARBALL"
  tar --numeric-owner --xattrs --xattrs-include='*' -C "$ROOT" -cf "$TARBALL.tmp" .
  mv "$TARBALL.tmp" "$TARBALL"
  rm -rf --one-file-system "$ROOT" "$LOG"
  trap - EXIT
fi

say "docker import $TARBALL as $TAG ($(du -h "$TARBALL" | cut -f1))"
docker import \
  -c 'ENV container=docker' \
  -c 'CMD ["/lib/systemd/systemd"]' \
  -c "LABEL io.node-agent.test-image=bookworm-systemd" \
  "$TARBALL" "$TAG" >/dev/null

# Earlier builds of this image (another hash) and their tarballs are not needed any more.
for old in $(docker images --format '{{.Repository}}:{{.Tag}}' "$REPO"); do
  [[ "$old" == "$TAG" ]] || docker rmi "$old" >/dev/null 2>&1 || true
done
for old in "$CACHE_DIR"/bookworm-systemd-*.tar; do
  [[ "$old" == "$TARBALL" || ! -e "$old" ]] || rm -f "$old"
done
echo "$TAG"
