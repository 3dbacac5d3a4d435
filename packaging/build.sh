#!/usr/bin/env bash
# Builds the node-agent and node-master packages: `build.sh deb` (dpkg-deb) and/or `build.sh rpm`
# (rpmbuild), into dist/ as node-agent_<ver>_<arch>.deb, node-master_<ver>_<arch>.deb and
# node-agent-<ver>-1.<rpmarch>.rpm, node-master-<ver>-1.<rpmarch>.rpm. docs/packaging.md says
# what is in them and why.
#
# Environment: VERSION (default: agent.__version__; digits and dots, written into the packaged
# agent/__init__.py so that N and N+1 can be built from one tree), DIST (default dist),
# BUILD_DIR (default build/pkg; builds sharing one wait for each other). Needs PyPI (the lock's wheels, cached in BUILD_DIR, and
# setuptools for the project's wheel) and nothing else from the network.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PY:-$REPO/.venv/bin/python}
DIST=${DIST:-dist}
BUILD_DIR=${BUILD_DIR:-build/pkg}
LOCK=packaging/requirements.lock
PYTHONS=(3.11 3.12 3.13)  # as packaging/lock.sh
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_5_x86_64
  manylinux1_x86_64)
DEB_ARCH=amd64
RPM_ARCH=x86_64
MAINTAINER="node-agent maintainers <node-agent@users.noreply.github.com>"
HOMEPAGE=https://github.com/node-agent/node-agent
VERSION=${VERSION:-$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' agent/__init__.py)}

say() { echo "package: $*" >&2; }
die() { echo "package: FAILED: $*" >&2; exit 1; }

[[ "$VERSION" =~ ^[0-9]+(\.[0-9]+){1,3}$ ]] ||
  die "VERSION=$VERSION: digits and dots only (1.2.3), a version both dpkg and PEP 440 read alike"
(($#)) || die "usage: packaging/build.sh deb|rpm..."
for kind in "$@"; do
  [[ "$kind" == deb || "$kind" == rpm ]] || die "unknown package kind $kind (deb or rpm)"
done
# Reproducible dates and mtimes: the last commit's time.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
mkdir -p "$DIST" "$BUILD_DIR"
BUILD_DIR=$(cd "$BUILD_DIR" && pwd)  # absolute from here on (rpmbuild, pip)
# One build at a time per BUILD_DIR (its stage and source trees are shared by every version).
exec 9>"$BUILD_DIR/.lock"
flock 9
pip() { "$PY" -m pip --isolated --disable-pip-version-check "$@"; }

# -- the lock's wheels, downloaded once per lock content --------------------------------------
lock_hash=$(sha256sum "$LOCK" | cut -c1-16)
wheelhouse=$BUILD_DIR/wheelhouse-$lock_hash
if [[ ! -e "$wheelhouse/.complete" ]]; then
  say "downloading the lock's wheels into $wheelhouse"
  rm -rf "$wheelhouse"
  platform_args=()
  for p in "${PLATFORMS[@]}"; do platform_args+=(--platform "$p"); done
  for v in "${PYTHONS[@]}"; do
    pip download -q --no-deps --only-binary=:all: --implementation cp --python-version "$v" \
      "${platform_args[@]}" --require-hashes -r "$LOCK" -d "$wheelhouse"
  done
  touch "$wheelhouse/.complete"
fi
find "$BUILD_DIR" -maxdepth 1 -name 'wheelhouse-*' ! -name "wheelhouse-$lock_hash" -exec rm -rf {} +

# -- the project's wheel, at VERSION ----------------------------------------------------------
src=$BUILD_DIR/src-$VERSION
rm -rf "$src" "$BUILD_DIR/wheel-$VERSION"
mkdir -p "$src"
# The working tree's files, untracked ones too (what the editable dev venv runs); a clean clone
# (CI) builds exactly the commit. A file deleted but not yet committed is left out.
git ls-files -z --cached --others --exclude-standard agent pyproject.toml README.md |
  while IFS= read -r -d '' f; do [[ -e "$f" ]] && printf '%s\0' "$f"; done |
  xargs -0 cp --parents -t "$src"
sed -i "s/^__version__ = .*/__version__ = \"$VERSION\"/" "$src/agent/__init__.py"
pip wheel -q --no-deps -w "$BUILD_DIR/wheel-$VERSION" "$src" >/dev/null
project_wheel=$(echo "$BUILD_DIR/wheel-$VERSION"/node_agent-"$VERSION"-py3-none-any.whl)
[[ -f "$project_wheel" ]] || die "no project wheel $project_wheel"

# -- one staged tree per package ----------------------------------------------------------------
# stage PACKAGE UNIT_DIR: the files of PACKAGE under $BUILD_DIR/stage/PACKAGE/root.
stage() {
  local pkg=$1 unitdir=$2 root=$BUILD_DIR/stage/$1/root
  rm -rf "$BUILD_DIR/stage/$pkg"
  install -d -m 0755 "$root/opt/$pkg/bin" "$root/opt/$pkg/wheels" "$root/usr/bin" \
    "$root$unitdir" "$root/etc/default" "$root/usr/share/doc/$pkg" \
    "$root/usr/share/man/man1"
  install -m 0644 "$wheelhouse"/*.whl "$project_wheel" "$root/opt/$pkg/wheels/"
  install -m 0644 "$LOCK" "$root/opt/$pkg/requirements.lock"
  echo "$VERSION" >"$root/opt/$pkg/VERSION"
  install -m 0755 packaging/files/make-venv "$root/opt/$pkg/bin/make-venv"
  local entries=(nodectl) name
  if [[ $pkg == node-agent ]]; then entries+=(node-agent); else entries+=(node-master); fi
  for name in "${entries[@]}"; do
    local to="$root/usr/bin/$name"
    # nodectl is in both packages: /usr/bin/nodectl is an alternative (postinst).
    [[ $name == nodectl ]] && to="$root/opt/$pkg/bin/nodectl"
    sed -e "s/@NAME@/$name/g" -e "s/@PACKAGE@/$pkg/g" packaging/files/entry >"$to"
    chmod 0755 "$to"
  done
  manpage "$pkg" "${pkg//-/_}" >"$root/usr/share/man/man1/$pkg.1"
  gzip -9n "$root/usr/share/man/man1/$pkg.1"
  install -m 0644 "systemd/$pkg.service" "$root$unitdir/$pkg.service"
  install -m 0644 "packaging/files/default-$pkg" "$root/etc/default/$pkg"
  sed "s/@PACKAGE@/$pkg/g" packaging/files/copyright >"$root/usr/share/doc/$pkg/copyright"
  install -m 0644 README.md "$root/usr/share/doc/$pkg/README.md"
  if [[ $pkg == node-agent ]]; then
    install -d -m 0755 "$root/etc/node-agent/manifests"
    install -m 0644 packaging/files/agent.toml "$root/etc/node-agent/agent.toml"
    install -m 0644 docs/configuration.md "$root/usr/share/doc/$pkg/configuration.md"
  fi
  install -m 0644 docs/packaging.md "$root/usr/share/doc/$pkg/packaging.md"
  find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
}

# manpage NAME MODULE: a man page from the command's --help (the source at VERSION).
manpage() {
  local help
  help=$(PYTHONPATH=$src "$PY" -c "import sys; from agent.cli.$2 import main; sys.exit(main(['--help']))" 2>&1 ||
    true)
  [[ "$help" == usage:* ]] || die "$1 --help: $help"
  printf '.TH %s 1 "%s" "%s %s"\n.SH NAME\n%s \\- %s\n.SH SYNOPSIS AND OPTIONS\n.nf\n' \
    "${1^^}" "$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)" "$1" "$VERSION" "$1" "$(summary "$1")"
  # Escape backslashes, and lines that troff would read as requests.
  sed -e 's/\\/\\e/g' -e "s/^\([.']\)/\\\\\&\1/" <<<"$help"
  printf '.fi\n.SH SEE ALSO\n/usr/share/doc/%s/README.md, /usr/share/doc/%s/packaging.md, nodectl \\-\\-help\n' "$1" "$1"
}

summary() { # PACKAGE: what goes in the Description / %description
  if [[ $1 == node-agent ]]; then
    echo "node agent for bare-metal and cloud fleets (and nodectl)"
  else
    echo "master of a node-agent fleet (registration, pods, API; and nodectl)"
  fi
}

# -- deb ------------------------------------------------------------------------------------------
build_deb() {
  local pkg=$1 priority=$2 root=$BUILD_DIR/stage/$1/root
  stage "$pkg" /lib/systemd/system
  # Debian policy: a native package's changelog, gzip -9n; lintian overrides with reasons in
  # docs/packaging.md.
  local date
  date=$(date -u -R -d "@$SOURCE_DATE_EPOCH")
  printf '%s (%s) unstable; urgency=medium\n\n  * Built from %s.\n\n -- %s  %s\n' \
    "$pkg" "$VERSION" "$(git describe --always --dirty 2>/dev/null || echo 'a source tree')" \
    "$MAINTAINER" "$date" | gzip -9n >"$root/usr/share/doc/$pkg/changelog.gz"
  install -d -m 0755 "$root/usr/share/lintian/overrides"
  sed "s/@PACKAGE@/$pkg/g" packaging/deb/lintian-overrides >"$root/usr/share/lintian/overrides/$pkg"
  install -d -m 0755 "$root/DEBIAN"
  local note=":"
  if [[ $pkg == node-agent ]]; then
    note='echo "node-agent: purged /var/lib/node-agent; the pods'"'"' containers are left to Docker (running if they were). Remove them: docker rm -f \$(docker ps -aq --filter label=io.node-agent.node)"'
  fi
  local script
  for script in postinst prerm postrm; do
    sed -e "s/@PACKAGE@/$pkg/g" -e "s/@PRIORITY@/$priority/g" "packaging/deb/$script" |
      awk -v note="$note" '{ sub(/@PURGE_NOTE@/, note); print }' >"$root/DEBIAN/$script"
    chmod 0755 "$root/DEBIAN/$script"
  done
  (cd "$root" && find etc -type f -printf '/%p\n' | sort) >"$root/DEBIAN/conffiles"
  (cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z |
    xargs -0 md5sum) >"$root/DEBIAN/md5sums"
  local size
  size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
  cat >"$root/DEBIAN/control" <<CONTROL
Package: $pkg
Version: $VERSION
Architecture: $DEB_ARCH
Maintainer: $MAINTAINER
Installed-Size: $size
Depends: python3 (>= 3.11), python3-venv
$([[ $pkg == node-agent ]] && echo "Recommends: docker.io | docker-ce")
Section: admin
Priority: optional
Homepage: $HOMEPAGE
Description: $(summary "$pkg")
 Self-contained: a virtualenv under /opt/$pkg, made at install time
 and offline from the pinned, hash-checked wheels the package ships;
 the systemd unit $pkg.service (Type=notify, with a watchdog).
 See /usr/share/doc/$pkg/packaging.md.
CONTROL
  sed -i '/^$/d' "$root/DEBIAN/control"
  touch -d "@$SOURCE_DATE_EPOCH" "$root/DEBIAN"/*
  local out="$DIST/${pkg}_${VERSION}_${DEB_ARCH}.deb"
  # Wheels are zip archives already: xz -1 made the deb 1.5 % smaller than gzip -1 and took
  # 15 times as long (36 s against 2.5 s on a loaded machine).
  dpkg-deb --root-owner-group -Zgzip -z1 --build "$root" "$out" >/dev/null
  say "$out ($(du -h "$out" | cut -f1), installed ${size} KiB + the venv)"
}

# -- rpm ------------------------------------------------------------------------------------------
build_rpm() {
  local pkg=$1 priority=$2 root=$BUILD_DIR/stage/$1/root top=$BUILD_DIR/rpm
  stage "$pkg" /usr/lib/systemd/system
  rm -rf "$top"
  mkdir -p "$top"/{BUILD,RPMS,SPECS,SRPMS,BUILDROOT}
  local spec=$top/SPECS/$pkg.spec note=":"
  if [[ $pkg == node-agent ]]; then
    note='echo "node-agent: removed /var/lib/node-agent; the pods'"'"' containers are left to Docker (running if they were). Remove them: docker rm -f $(docker ps -aq --filter label=io.node-agent.node)"'
  fi
  sed -e "s/@PACKAGE@/$pkg/g" -e "s/@PRIORITY@/$priority/g" -e "s/@VERSION@/$VERSION/g" \
    -e "s|@SUMMARY@|$(summary "$pkg")|g" -e "s|@HOMEPAGE@|$HOMEPAGE|g" \
    -e "s|@STAGE@|$root|g" packaging/rpm/package.spec |
    awk -v note="$note" '{ sub(/@PURGE_NOTE@/, note); print }' >"$spec"
  if [[ $pkg == node-agent ]]; then
    printf '%%dir /etc/node-agent\n%%dir /etc/node-agent/manifests\n%%config(noreplace) /etc/node-agent/agent.toml\n%%doc /usr/share/doc/node-agent/configuration.md\n' >>"$spec"
  fi
  rpmbuild -bb --quiet --target "$RPM_ARCH" --define "_topdir $top" \
    --define "_build_id_links none" "$spec" >"$top/rpmbuild.log" 2>&1 ||
    { tail -n 30 "$top/rpmbuild.log" >&2; die "rpmbuild $pkg (log $top/rpmbuild.log)"; }
  local built
  built=$(find "$top/RPMS" -name "$pkg-$VERSION-*.rpm")
  cp "$built" "$DIST/"
  say "$DIST/$(basename "$built") ($(du -h "$built" | cut -f1))"
}

for kind in "$@"; do
  start=$SECONDS
  "build_$kind" node-agent 50
  "build_$kind" node-master 40
  say "$kind: both packages in $((SECONDS - start)) s (VERSION=$VERSION)"
done
