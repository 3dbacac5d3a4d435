"""The built packages (``make test-packaging``: ``make deb rpm`` first, then these): the debs'
files, conffiles, maintainer scripts and Depends; lintian; the rpms' file lists, scripts and
requirements; an rpm installed with ``rpm -i --nodeps`` into a directory root and its entry
points run; the wheels both kinds ship are the lock's, byte for byte; the systemd units pass
``systemd-analyze verify``; the cloud-init file passes ``cloud-init schema``.

Installing in a host that boots systemd (install, upgrade, removal, purge, watchdog, the join
with a token) is tests/system/pkg's. Environment: DIST (default dist), VERSION (default
agent.__version__), the packages' version.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from agent import __version__

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / os.environ.get("DIST", "dist")
VERSION = os.environ.get("VERSION") or __version__
PACKAGES = ("node-agent", "node-master")
LOCK = ROOT / "packaging" / "requirements.lock"


def run(*cmd: str | Path, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=600, check=False, **kw
    )
    if check and done.returncode != 0:
        raise AssertionError(f"{cmd} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def deb(package: str) -> Path:
    path = DIST / f"{package}_{VERSION}_amd64.deb"
    assert path.is_file(), f"{path} missing: make deb VERSION={VERSION}"
    return path


def rpm(package: str) -> Path:
    path = DIST / f"{package}-{VERSION}-1.x86_64.rpm"
    assert path.is_file(), f"{path} missing: make rpm VERSION={VERSION}"
    return path


def lock_hashes() -> set[str]:
    return set(re.findall(r"--hash=sha256:([0-9a-f]{64})", LOCK.read_text()))


@pytest.mark.parametrize("package", PACKAGES)
def test_deb_files(package: str) -> None:
    listing = run("dpkg-deb", "-c", deb(package)).stdout
    files = {line.split()[-1].removeprefix(".") for line in listing.splitlines()}
    owners = {line.split()[1] for line in listing.splitlines()}
    assert owners == {"root/root"}
    cmd = package
    expected = {
        f"/usr/bin/{cmd}",
        f"/opt/{package}/bin/make-venv",
        f"/opt/{package}/bin/nodectl",
        f"/opt/{package}/requirements.lock",
        f"/opt/{package}/VERSION",
        f"/opt/{package}/wheels/node_agent-{VERSION}-py3-none-any.whl",
        f"/lib/systemd/system/{package}.service",
        f"/etc/default/{package}",
        f"/usr/share/doc/{package}/copyright",
        f"/usr/share/doc/{package}/changelog.gz",
        f"/usr/share/man/man1/{package}.1.gz",
        f"/usr/share/lintian/overrides/{package}",
    }
    if package == "node-agent":
        expected |= {"/etc/node-agent/agent.toml", "/etc/node-agent/manifests/"}
    assert expected <= files, expected - files
    # nodectl is in both packages: an alternative, never a file of either.
    assert "/usr/bin/nodectl" not in files
    # No virtualenv in the package: postinst makes it with the host's python3.
    assert not any("/venv" in f for f in files)


@pytest.mark.parametrize("package", PACKAGES)
def test_deb_control_conffiles_and_maintainer_scripts(package: str, tmp_path: Path) -> None:
    info = run("dpkg-deb", "-f", deb(package)).stdout
    fields = dict(
        line.split(": ", 1)
        for line in info.splitlines()
        if not line.startswith(" ") and ": " in line
    )
    assert fields["Package"] == package
    assert fields["Version"] == VERSION
    assert fields["Architecture"] == "amd64"
    assert fields["Depends"] == "python3 (>= 3.11), python3-venv"
    assert int(fields["Installed-Size"]) > 1000
    if package == "node-agent":
        assert fields["Recommends"] == "docker.io | docker-ce"
    run("dpkg-deb", "-e", deb(package), tmp_path / "DEBIAN")
    control = tmp_path / "DEBIAN"
    conffiles = (control / "conffiles").read_text().split()
    expected = [f"/etc/default/{package}"]
    if package == "node-agent":
        expected.append("/etc/node-agent/agent.toml")
    assert sorted(conffiles) == sorted(expected)
    postinst = (control / "postinst").read_text()
    prerm = (control / "prerm").read_text()
    postrm = (control / "postrm").read_text()
    assert f"/opt/{package}/bin/make-venv\n" in postinst
    assert f"/opt/{package}/bin/make-venv --prune" in postinst
    assert 'deb-systemd-helper enable "$UNIT"' in postinst
    assert 'if [ -n "$2" ]; then _action=restart; else _action=start; fi' in postinst
    assert (
        f"update-alternatives --install /usr/bin/nodectl nodectl /opt/{package}/bin/nodectl"
        in postinst
    )
    # Stopped on removal only (an upgrade restarts in postinst, pods untouched).
    assert 'if [ "$1" = "remove" ]; then' in prerm
    assert f"deb-systemd-invoke stop {package}.service" in prerm
    assert f"/opt/{package}/bin/make-venv --remove" in prerm
    purge = postrm.split("purge)", 1)[1]
    assert f"rm -rf /var/lib/{package}" in purge
    assert "@" not in postinst + prerm + postrm  # every placeholder filled
    if package == "node-agent":
        assert "left to Docker" in purge and "docker rm -f" in purge
    for script in ("postinst", "prerm", "postrm"):
        assert (control / script).stat().st_mode & 0o755 == 0o755
        run("sh", "-n", control / script)


@pytest.mark.parametrize("package", PACKAGES)
def test_packaged_wheels_are_the_locks_and_the_unit_the_trees(package: str, tmp_path: Path) -> None:
    run("dpkg-deb", "-x", deb(package), tmp_path)
    wheels = sorted((tmp_path / "opt" / package / "wheels").glob("*.whl"))
    allowed = lock_hashes()
    for wheel in wheels:
        if wheel.name.startswith("node_agent-"):
            with zipfile.ZipFile(wheel) as zf:
                init = zf.read("agent/__init__.py").decode()
            assert f'__version__ = "{VERSION}"' in init
            continue
        assert hashlib.sha256(wheel.read_bytes()).hexdigest() in allowed, wheel.name
    for python in ("cp311", "cp312", "cp313"):
        assert any(f"-{python}-" in w.name for w in wheels), python
    unit = tmp_path / "lib" / "systemd" / "system" / f"{package}.service"
    assert unit.read_bytes() == (ROOT / "systemd" / f"{package}.service").read_bytes()
    assert (tmp_path / "opt" / package / "VERSION").read_text().strip() == VERSION


def test_lintian_finds_no_error_and_no_warning() -> None:
    done = run("lintian", "--fail-on", "error,warning", *(deb(p) for p in PACKAGES), check=False)
    tags = [line for line in done.stdout.splitlines() if re.match(r"^[EW]: ", line)]
    assert done.returncode == 0 and not tags, done.stdout + done.stderr


@pytest.mark.parametrize("package", PACKAGES)
def test_rpm_file_list_config_scripts_and_requires(package: str) -> None:
    files = set(run("rpm", "-qpl", rpm(package)).stdout.split())
    assert {
        f"/usr/bin/{package}",
        f"/opt/{package}/bin/make-venv",
        f"/opt/{package}/bin/nodectl",
        f"/opt/{package}/wheels/node_agent-{VERSION}-py3-none-any.whl",
        f"/usr/lib/systemd/system/{package}.service",
        f"/etc/default/{package}",
    } <= files
    assert "/usr/bin/nodectl" not in files
    config = set(run("rpm", "-qpc", rpm(package)).stdout.split())
    expected = {f"/etc/default/{package}"}
    if package == "node-agent":
        expected.add("/etc/node-agent/agent.toml")
    assert config == expected
    scripts = run("rpm", "-qp", "--scripts", rpm(package)).stdout
    post = scripts.split("postinstall scriptlet", 1)[1].split("preuninstall scriptlet", 1)[0]
    assert f"/opt/{package}/bin/make-venv\n" in post
    assert f"systemctl enable --now {package}.service" in post
    assert f"systemctl try-restart {package}.service" in post
    preun = scripts.split("preuninstall scriptlet", 1)[1]
    assert 'if [ "$1" -eq 0 ]; then' in preun
    assert f"systemctl disable --now {package}.service" in preun
    requires = run("rpm", "-qp", "--requires", rpm(package)).stdout
    assert "(python3 >= 3.11 or python3.11 or python3.12 or python3.13)" in requires
    info = run("rpm", "-qpi", rpm(package)).stdout
    assert re.search(rf"^Version\s*: {re.escape(VERSION)}$", info, re.M)


@pytest.fixture(scope="module")
def rpm_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both rpms installed into a directory root (``rpm -i --nodeps --noscripts --root``), then
    the venvs made by the packages' own make-venv with this host's python3: the scriptlets do
    not run there, as the root holds no shell and no python (docs/packaging.md)."""
    root = tmp_path_factory.mktemp("rpmroot")
    run(
        "rpm",
        "-i",
        "--nodeps",
        "--noscripts",
        "--root",
        root,
        "--dbpath",
        "/var/lib/rpm",
        *(rpm(p) for p in PACKAGES),
    )
    for package in PACKAGES:
        run(root / "opt" / package / "bin" / "make-venv")
    return root


def test_rpm_root_holds_both_packages(rpm_root: Path) -> None:
    listed = run("rpm", "--root", rpm_root, "--dbpath", "/var/lib/rpm", "-qa").stdout.split()
    assert sorted(listed) == sorted(f"{p}-{VERSION}-1.x86_64" for p in PACKAGES)


@pytest.mark.parametrize(
    ("package", "command"),
    [
        ("node-agent", "node-agent"),
        ("node-master", "node-master"),
        ("node-agent", "nodectl"),
        ("node-master", "nodectl"),
    ],
)
def test_rpm_entry_points_run(rpm_root: Path, package: str, command: str) -> None:
    venv = rpm_root / "opt" / package / "venv"
    assert os.readlink(venv).startswith(f"venv-{VERSION}-py3")
    if command == "nodectl":
        done = run(venv / "bin" / "nodectl", "--help")
        assert done.stdout.startswith("usage: nodectl")
    else:
        assert run(venv / "bin" / command, "version").stdout.strip() == f"{command} {VERSION}"
    # The /usr/bin (or /opt/<package>/bin) wrapper execs exactly that.
    wrapper = rpm_root / ("usr/bin" if command != "nodectl" else f"opt/{package}/bin") / command
    assert f'exec "$VENV/bin/{command}" "$@"' in wrapper.read_text()
    assert f"VENV=/opt/{package}/venv" in wrapper.read_text()


def test_make_venv_refuses_a_wheel_that_is_not_the_locks(rpm_root: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "node-agent"
    shutil.copytree(
        rpm_root / "opt" / "node-agent",
        prefix,
        symlinks=True,
        ignore=shutil.ignore_patterns("venv*"),
    )
    victim = next(prefix.glob("wheels/h2-*.whl"))
    victim.write_bytes(victim.read_bytes() + b"\0")
    done = run(prefix / "bin" / "make-venv", check=False)
    assert done.returncode != 0
    assert "THESE PACKAGES DO NOT MATCH THE HASHES" in done.stdout + done.stderr
    assert not (prefix / "venv").exists()


def test_make_venv_installs_its_own_versions_wheel_beside_an_older_one(
    rpm_root: Path, tmp_path: Path
) -> None:
    """An rpm upgrade runs the new %post while the old package's files (its wheel too) are
    still installed: make-venv must take the wheel of its VERSION, not every node_agent wheel."""
    prefix = tmp_path / "node-agent"
    shutil.copytree(
        rpm_root / "opt" / "node-agent",
        prefix,
        symlinks=True,
        ignore=shutil.ignore_patterns("venv*"),
    )
    own = prefix / "wheels" / f"node_agent-{VERSION}-py3-none-any.whl"
    shutil.copy(own, prefix / "wheels" / "node_agent-0.0.1-py3-none-any.whl")
    run(prefix / "bin" / "make-venv")
    assert run(prefix / "venv" / "bin" / "node-agent", "version").stdout.strip() == (
        f"node-agent {VERSION}"
    )


def test_make_venv_prune_keeps_only_the_current_venv(rpm_root: Path) -> None:
    prefix = rpm_root / "opt" / "node-master"
    (prefix / "venv-0.0.1-py311").mkdir()
    run(prefix / "bin" / "make-venv", "--prune")
    assert sorted(p.name for p in prefix.glob("venv-*")) == [os.readlink(prefix / "venv")]


def test_units_pass_systemd_analyze_verify() -> None:
    done = run("bash", ROOT / "packaging" / "tests" / "verify-units.sh")
    assert "no warnings" in done.stdout


def test_verify_units_fails_on_a_bad_directive(tmp_path: Path) -> None:
    bad = tmp_path / "node-master.service"
    bad.write_text(
        (ROOT / "systemd" / "node-master.service")
        .read_text()
        .replace("Restart=always", "Restart=sometimes")
    )
    done = run(
        "bash",
        ROOT / "packaging" / "tests" / "verify-units.sh",
        ROOT / "systemd" / "node-agent.service",
        bad,
        check=False,
    )
    assert done.returncode == 1
    assert "Failed to parse service restart specifier" in done.stderr


def test_cloud_init_schema(tmp_path: Path) -> None:
    template = ROOT / "packaging" / "cloud-init" / "user-data.yaml"
    assert run("cloud-init", "schema", "--config-file", template).returncode == 0
    rendered = tmp_path / "user-data.yaml"
    rendered.write_text(
        run(
            "bash",
            ROOT / "packaging" / "cloud-init" / "render.sh",
            "--master",
            "https://10.0.0.1:6443",
            "--ca-pin",
            "sha256:" + "ab" * 32,
            "--token",
            "abcdef.0123456789abcdef",
            "--label",
            "zone=a",
            "--package",
            "/tmp/n.deb",
        ).stdout
    )
    assert run("cloud-init", "schema", "--config-file", rendered).returncode == 0
    # The check can fail: a key of the wrong type.
    bad = tmp_path / "bad.yaml"
    bad.write_text(rendered.read_text().replace("defer: true", "defer: sometimes", 1))
    done = run("cloud-init", "schema", "--config-file", bad, check=False)
    assert done.returncode != 0
    assert "defer" in done.stdout + done.stderr
