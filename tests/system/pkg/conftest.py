"""Package-test fixtures: the systemd image (built, or reused by its content hash) and booted
test hosts. A module's hosts live as long as the module (booting and installing is the costly
part; a module's tests are one operator's story in order) and are removed at its end with the
containers their agents started on the host's engine; when any test of the module failed, the
journal of each host is printed (pytest shows it with the failure)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Generator, Iterator

import pytest

from tests.system.pkg.host import SystemdHost, build_image, remove_leftovers, remove_pods_of

HostFactory = Callable[..., SystemdHost]
_FAILED_MODULES: set[str] = set()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        _FAILED_MODULES.add(item.nodeid.split("::", 1)[0])
    return report


@pytest.fixture(scope="session")
def systemd_image() -> str:
    remove_leftovers()
    return build_image()


@pytest.fixture(scope="module")
def boot_host(systemd_image: str, request: pytest.FixtureRequest) -> Iterator[HostFactory]:
    """``boot_host(role, docker_socket=False)``: a booted host named ``pkg-<role>-<random>``
    (also its hostname, hence an agent's default node name)."""
    hosts: list[SystemdHost] = []
    run_id = uuid.uuid4().hex[:6]

    def boot(role: str, *, docker_socket: bool = False) -> SystemdHost:
        host = SystemdHost(f"pkg-{role}-{run_id}", systemd_image, docker_socket=docker_socket)
        hosts.append(host)
        host.boot()
        return host

    try:
        yield boot
    finally:
        if request.node.nodeid.split("::", 1)[0] in _FAILED_MODULES:
            for host in hosts:
                if host.started:
                    # systemd in a container of this host logs a harmless line per unit
                    # about cgroup IDs on the v1 hierarchy; left out of the dump.
                    journal = "\n".join(
                        line
                        for line in host.journal().splitlines()
                        if "Failed to get cgroup ID" not in line
                    )
                    print(f"\n===== journal of {host.name} =====\n{journal}")
        for host in hosts:
            host.close()
            remove_pods_of(host.name)
