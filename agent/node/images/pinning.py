"""Digest pinning: what a pod's container reference resolved to when the pod was admitted.

A pod's containers are created from the image *id* their reference named at admission (the
first time the container is created for this spec), never from the reference again: a tag
moved (``docker tag``, a push over the tag) changes nothing for a running pod, through its
containers' restarts and an agent restart (the pins are in the worker's checkpointed book). A
new spec (another image, any manifest change, ``apply --force``, a changed static file)
resolves again. Status shows the pin as ``imageID`` the way kubelet on Docker did:
``docker-pullable://<repo>@sha256:…`` when a registry knows the image by that digest,
``docker://sha256:<id>`` for an image only this engine knows (imported, built, re-tagged).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.node.runtime.base import ImageRecord, repo_digest_for

PULLABLE_PREFIX = "docker-pullable://"
LOCAL_PREFIX = "docker://"


@dataclass(frozen=True, slots=True)
class PinnedImage:
    """``reference`` (as the manifest spells it) resolved to ``image_id`` and, when a
    registry knows it, ``repo_digest`` (``repo@sha256:…``)."""

    reference: str
    image_id: str
    repo_digest: str = ""

    @classmethod
    def of(cls, reference: str, record: ImageRecord) -> PinnedImage:
        return cls(reference, record.id, repo_digest_for(reference, record.repo_digests))

    def status_image_id(self) -> str:
        """``imageID`` as a container status shows it."""
        if self.repo_digest:
            return PULLABLE_PREFIX + self.repo_digest
        return LOCAL_PREFIX + self.image_id

    def to_json(self) -> dict[str, str]:
        return {"reference": self.reference, "image_id": self.image_id, "digest": self.repo_digest}

    @classmethod
    def from_json(cls, data: object, where: str) -> PinnedImage:
        """The value ``to_json`` wrote; ValueError naming ``where`` and the field otherwise."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
        fields: dict[str, str] = {}
        for name in ("reference", "image_id", "digest"):
            value: Any = data.get(name, "")
            if not isinstance(value, str):
                raise ValueError(f"{where}.{name}: expected a string, got {value!r}")
            fields[name] = value
        if not fields["reference"] or not fields["image_id"].startswith("sha256:"):
            raise ValueError(f"{where}: needs a reference and an image_id sha256:…")
        return cls(fields["reference"], fields["image_id"], fields["digest"])
