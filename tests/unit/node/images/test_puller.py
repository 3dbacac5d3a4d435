"""The pull manager on the FakeRuntime with a fake clock: one pull per reference, a bounded
number at once, back-off per image with Kubernetes' reasons, kubelet's events, credentials."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from agent.errors import ImagePullError, ImageUnavailableError, RuntimeUnavailableError
from agent.node.backoff import BackoffPolicy
from agent.node.images.puller import (
    ERR_IMAGE_NEVER_PULL,
    ERR_IMAGE_PULL,
    IMAGE_PULL_BACKOFF,
    INVALID_IMAGE_NAME,
    PROGRESS_EVENT_INTERVAL_S,
    PULL_MESSAGE_MAX_CHARS,
    PullManager,
)
from agent.node.runtime.base import (
    ImageRecord,
    PullProgress,
    PullProgressCallback,
    RegistryAuth,
)
from agent.node.runtime.fake import FakeRuntime
from tests.unit.node.asyncwait import until
from tests.unit.node.pods.fakeclock import FakeClock

WAIT_S = 5.0


class GatedRuntime(FakeRuntime):
    """Pulls wait on ``gate`` while it is set; ``pulling`` counts pulls in flight."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock=clock)
        self.gate: asyncio.Event | None = None
        self.pulling = 0
        self.started = 0  # pull_image calls (the fake counts those that passed the gate)
        self.most_pulling = 0
        self.progress_script: list[tuple[float, PullProgress]] = []  # (advance_s, report)
        self.fake_clock = clock

    async def pull_image(
        self,
        ref: str,
        progress: PullProgressCallback | None = None,
        auth: RegistryAuth | None = None,
    ) -> ImageRecord:
        self.pulling += 1
        self.started += 1
        self.most_pulling = max(self.most_pulling, self.pulling)
        try:
            if self.gate is not None:
                await self.gate.wait()
            for advance_s, report in self.progress_script:
                self.fake_clock.advance(advance_s)
                if progress is not None:
                    progress(report)
            return await super().pull_image(ref, progress, auth)
        finally:
            self.pulling -= 1


@dataclass
class Heard:
    """What one pod was told: (reason, message, warning) in order."""

    events: list[tuple[str, str, bool]] = field(default_factory=list)

    def __call__(self, reason: str, message: str, warning: bool) -> None:
        self.events.append((reason, message, warning))

    @property
    def reasons(self) -> list[str]:
        return [reason for reason, _, _ in self.events]


@dataclass
class PullRig:
    clock: FakeClock
    runtime: GatedRuntime
    images: PullManager


@pytest.fixture
async def rig() -> AsyncIterator[PullRig]:
    clock = FakeClock()
    runtime = GatedRuntime(clock)
    yield PullRig(clock, runtime, PullManager(runtime, clock=clock, backoff=BackoffPolicy(10, 40)))


async def test_two_pods_one_pull(rig: PullRig) -> None:
    rig.runtime.publish_image("web:1", size_bytes=1234)
    rig.runtime.gate = asyncio.Event()
    a, b = Heard(), Heard()
    first = asyncio.create_task(rig.images.ensure("web:1", "IfNotPresent", a))
    await until(lambda: rig.runtime.pulling == 1, "a pull in flight")
    second = asyncio.create_task(rig.images.ensure("web:1", "IfNotPresent", b))
    await until(lambda: b.reasons == ["Pulling"], "the second pod told")
    rig.clock.advance(1.5)
    rig.runtime.gate.set()
    one, two = await asyncio.gather(first, second)
    assert one == two
    assert rig.runtime.calls["pull_image"] == 1
    assert rig.images.attempts == 1
    for heard in (a, b):
        assert heard.reasons == ["Pulling", "Pulled"]
        assert heard.events[0][1] == 'Pulling image "web:1"'
        assert heard.events[1][1] == (
            'Successfully pulled image "web:1" in 1.5s. Image size: 1234 bytes.'
        )
    third = Heard()
    await rig.images.ensure("web:1", "IfNotPresent", third)
    assert third.events == [("Pulled", 'Container image "web:1" already present on machine', False)]


async def test_parallel_pulls_are_bounded_and_a_present_image_never_waits(
    rig: PullRig,
) -> None:
    for ref in ("a:1", "b:1", "c:1"):
        rig.runtime.publish_image(ref)
    rig.runtime.add_image("local:1")
    rig.runtime.gate = asyncio.Event()
    pulls = [
        asyncio.create_task(rig.images.ensure(ref, "Always", Heard()))
        for ref in ("a:1", "b:1", "c:1")
    ]
    await until(lambda: rig.runtime.pulling == 2, "two pulls in flight")
    # Both slots are taken by hanging pulls: an image that is present is there at once.
    present = await rig.images.ensure("local:1", "IfNotPresent", Heard())
    assert present.repo_tags == ("local:1",)
    rig.runtime.gate.set()
    await asyncio.gather(*pulls)
    assert rig.runtime.most_pulling == 2
    assert rig.runtime.calls["pull_image"] == 3


async def test_a_failed_pull_backs_off_for_every_pod_one_attempt_per_step(rig: PullRig) -> None:
    a, b = Heard(), Heard()
    with pytest.raises(ImagePullError) as caught:
        await rig.images.ensure("127.0.0.1:1/nope:1", "Always", a)
    assert (caught.value.reason, caught.value.retry_in_s) == (ERR_IMAGE_PULL, 10)
    assert a.reasons == ["Pulling", "Failed"]
    assert a.events[1][1].startswith('Failed to pull image "127.0.0.1:1/nope:1": ')
    assert a.events[1][2] is True
    rig.clock.advance(4)
    with pytest.raises(ImagePullError) as caught:
        await rig.images.ensure("127.0.0.1:1/nope:1", "IfNotPresent", b)
    assert (caught.value.reason, caught.value.retry_in_s) == (IMAGE_PULL_BACKOFF, 6)
    assert b.events == [("BackOff", 'Back-off pulling image "127.0.0.1:1/nope:1"', False)]
    assert rig.runtime.calls["pull_image"] == 1
    rig.clock.advance(6)
    rig.runtime.gate = asyncio.Event()  # the two pods ask at the same moment
    both = [
        asyncio.create_task(rig.images.ensure("127.0.0.1:1/nope:1", "Always", heard))
        for heard in (a, b)
    ]
    await until(lambda: rig.runtime.pulling == 1, "a pull in flight")
    rig.runtime.gate.set()
    errors = await asyncio.gather(*both, return_exceptions=True)
    assert [(e.reason, e.retry_in_s) for e in errors if isinstance(e, ImagePullError)] == [
        (ERR_IMAGE_PULL, 20),
        (ERR_IMAGE_PULL, 20),
    ]
    assert rig.runtime.calls["pull_image"] == 2  # one attempt per back-off step
    assert rig.images.backoff_remaining_s("127.0.0.1:1/nope:1") == 20
    rig.clock.advance(20)
    rig.runtime.publish_image("127.0.0.1:1/nope:1")
    await rig.images.ensure("127.0.0.1:1/nope:1", "Always", a)
    assert rig.images.backoff_remaining_s("127.0.0.1:1/nope:1") == 0  # success forgets


async def test_the_engine_down_costs_no_back_off(rig: PullRig) -> None:
    rig.runtime.publish_image("web:1")
    rig.runtime.fail("pull_image", RuntimeUnavailableError("engine gone"))
    with pytest.raises(RuntimeUnavailableError):
        await rig.images.ensure("web:1", "Always", Heard())
    assert rig.images.backoff_remaining_s("web:1") == 0
    await rig.images.ensure("web:1", "Always", Heard())


async def test_a_waiter_takes_over_when_the_pulling_pod_goes_away(rig: PullRig) -> None:
    rig.runtime.publish_image("web:1")
    rig.runtime.gate = asyncio.Event()
    leader = asyncio.create_task(rig.images.ensure("web:1", "Always", Heard()))
    await until(lambda: rig.runtime.pulling == 1, "a pull in flight")
    waiter = asyncio.create_task(rig.images.ensure("web:1", "Always", Heard()))
    await asyncio.sleep(0)
    leader.cancel()  # its pod was deleted
    await asyncio.gather(leader, return_exceptions=True)
    await until(lambda: rig.runtime.started == 2, "the waiter pulling")
    rig.runtime.gate.set()
    record = await asyncio.wait_for(waiter, WAIT_S)
    assert record.repo_tags == ("web:1",)


async def test_never_and_invalid_names_pull_nothing(rig: PullRig) -> None:
    heard = Heard()
    with pytest.raises(ImagePullError) as caught:
        await rig.images.ensure("absent:1", "Never", heard)
    assert (caught.value.reason, caught.value.retry_in_s) == (ERR_IMAGE_NEVER_PULL, None)
    assert heard.events == [
        (
            "ErrImageNeverPull",
            'Container image "absent:1" is not present with pull policy of Never',
            True,
        )
    ]
    heard = Heard()
    with pytest.raises(ImagePullError) as caught:
        await rig.images.ensure("Bad::Name", "Always", heard)
    assert (caught.value.reason, caught.value.retry_in_s) == (INVALID_IMAGE_NAME, None)
    assert heard.reasons == ["InspectFailed"]
    assert "invalid reference format" in heard.events[0][1]
    assert rig.runtime.calls["pull_image"] == 0
    assert rig.runtime.calls["inspect_image"] == 1  # Never looked; the bad name not even that


async def test_progress_events_show_bytes_done_of_total(rig: PullRig) -> None:
    rig.runtime.publish_image("big:1")
    mib = 1 << 20
    rig.runtime.progress_script = [
        (1, PullProgress("l1", "Downloading", 1 * mib, 10 * mib)),
        (1, PullProgress("l2", "Downloading", 0, 30 * mib)),
        (PROGRESS_EVENT_INTERVAL_S, PullProgress("l1", "Downloading", 5 * mib, 10 * mib)),
        (1, PullProgress("l1", "Download complete")),
        (PROGRESS_EVENT_INTERVAL_S, PullProgress("l2", "Downloading", 10 * mib, 30 * mib)),
    ]
    heard = Heard()
    await rig.images.ensure("big:1", "IfNotPresent", heard)
    progress = [m for r, m, _ in heard.events if r == "Pulling" and ":" in m.split('"')[-1]]
    assert progress == [
        'Pulling image "big:1": 5.0 MiB of 40.0 MiB',
        'Pulling image "big:1": 20.0 MiB of 40.0 MiB',
    ]


async def test_credentials_go_with_the_pull(rig: PullRig) -> None:
    secret = RegistryAuth("r.example", "bot", "pw")

    class Fixed:
        async def auth_for(self, image: str) -> RegistryAuth | None:
            return secret

    images = PullManager(
        rig.runtime, clock=rig.clock, backoff=BackoffPolicy(10, 40), credentials=Fixed()
    )
    rig.runtime.publish_image("r.example/app:1")
    await images.ensure("r.example/app:1", "Always", Heard())
    assert rig.runtime.pull_auths == [secret]


async def test_a_hostile_registrys_error_reaches_events_and_status_bounded_on_one_line(
    rig: PullRig,
) -> None:
    """dockerd relays a registry's error text as it is (measured: a 200,000-character message
    holding ESC and a newline came back whole from ``docker pull``): what a pod's events, its
    waiting status and the back-off carry is one line of at most PULL_MESSAGE_MAX_CHARS."""
    hostile = "manifest unknown: \x1b[2J\x1b[31mPWNED\nforged line " + "A" * 200_000
    rig.runtime.fail("pull_image", ImageUnavailableError(f"image could not be pulled: {hostile}"))
    heard = Heard()
    with pytest.raises(ImagePullError) as caught:
        await rig.images.ensure("127.0.0.1:1/evil:1", "Always", heard)
    rig.clock.advance(1)
    with pytest.raises(ImagePullError) as backoff:
        await rig.images.ensure("127.0.0.1:1/evil:1", "Always", heard)
    invalid = Heard()
    with pytest.raises(ImagePullError) as bad_name:
        await rig.images.ensure("evil\x1b[2J" + "a" * 100_000, "Always", invalid)
    texts = [
        caught.value.message,
        backoff.value.message,
        bad_name.value.message,
        *(message for _, message, _ in heard.events + invalid.events),
    ]
    assert heard.reasons == ["Pulling", "Failed", "BackOff"]
    for text in texts:
        assert len(text) <= PULL_MESSAGE_MAX_CHARS + 300, len(text)  # + the image, the prefix
        assert "\x1b" not in text and "\n" not in text, text[:200]
    assert "\\x1b[2J\\x1b[31mPWNED forged line AAA" in caught.value.message
