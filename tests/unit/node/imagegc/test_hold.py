"""Hold points (``NODE_AGENT_HOLD_AT``): the agent waits at the named point for SIGUSR2, once."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from agent.errors import ConfigError
from agent.node import crashpoints


def test_an_unknown_hold_point_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown hold point 'imagegc-typo'"):
        crashpoints.arm_hold_from_env({crashpoints.HOLD_ENV_VAR: "imagegc-typo"})
    assert crashpoints.arm_hold_from_env({}) == ""


async def test_the_armed_point_waits_for_sigusr2_once() -> None:
    assert (
        crashpoints.arm_hold_from_env({crashpoints.HOLD_ENV_VAR: "imagegc-before-delete"})
        == "imagegc-before-delete"
    )
    try:
        await crashpoints.hold("another-point")  # not armed there: returns at once
        held = asyncio.create_task(crashpoints.hold("imagegc-before-delete"))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not held.done()
        os.kill(os.getpid(), signal.SIGUSR2)
        await asyncio.wait_for(held, 10)
        await crashpoints.hold("imagegc-before-delete")  # disarmed after its one hold
    finally:
        crashpoints.arm_hold_from_env({})
