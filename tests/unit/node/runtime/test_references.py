"""Image references as the runtimes compare them (pure)."""

from __future__ import annotations

import pytest

from agent.node.runtime.base import familiar_reference, repo_digest_for, split_reference


@pytest.mark.parametrize(
    ("ref", "familiar"),
    [
        ("busybox", "busybox:latest"),
        ("busybox:1.36", "busybox:1.36"),
        ("docker.io/library/busybox", "busybox:latest"),
        ("docker.io/acme/web:2", "acme/web:2"),
        ("registry:5000/web", "registry:5000/web:latest"),
        ("web@sha256:abc", "web@sha256:abc"),
    ],
)
def test_familiar_reference(ref: str, familiar: str) -> None:
    assert familiar_reference(ref) == familiar


def test_split_reference_keeps_digests_whole() -> None:
    assert split_reference("web@sha256:abc") == ("web@sha256:abc", "")


def test_repo_digest_for_picks_the_references_repository() -> None:
    digests = ("other@sha256:1", "acme/web@sha256:2")
    assert repo_digest_for("docker.io/acme/web:2", digests) == "acme/web@sha256:2"
    assert repo_digest_for("acme/web@sha256:2", digests) == "acme/web@sha256:2"
    assert repo_digest_for("nothing:1", digests) == ""
