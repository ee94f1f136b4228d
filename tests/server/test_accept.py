"""The accept loop: per-connection errors are skipped, running out of descriptors is
logged once and backed off (not spun on), and only the listener's own failure ends it."""

from __future__ import annotations

import errno
import resource
from typing import cast

import pytest
import trio
import trio.testing

from trivmc.server.accept import MAX_PAUSE, accept_loop, raise_fd_limit


class ScriptedListener:
    """accept() raises the scripted errors (or returns a connection) in order."""

    def __init__(self, script: list[int | str]) -> None:
        self.script = script
        self.calls: list[float] = []

    async def accept(self) -> tuple[object, object]:
        await trio.lowlevel.checkpoint()
        self.calls.append(trio.current_time())
        if not self.script:
            await trio.sleep_forever()
        step = self.script.pop(0)
        if isinstance(step, int):
            raise OSError(step, errno.errorcode[step])
        return step, ("127.0.0.1", 1)


async def run_script(script: list[int | str]) -> tuple[ScriptedListener, list[object]]:
    listener = ScriptedListener(script)
    accepted: list[object] = []
    with trio.move_on_after(100):
        await accept_loop(
            cast(trio.socket.SocketType, listener), lambda s, a: accepted.append(s), "test"
        )
    return listener, accepted


async def test_connection_errors_are_skipped(autojump_clock: trio.testing.MockClock) -> None:
    listener, accepted = await run_script(
        ["a", errno.ECONNABORTED, errno.EPROTO, errno.ECONNRESET, "b"]
    )
    assert accepted == ["a", "b"]
    assert listener.calls[-1] - listener.calls[0] == 0  # no pause for those


async def test_out_of_descriptors_logged_once_and_backed_off(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    listener, accepted = await run_script([errno.EMFILE] * 30 + ["a"] + [errno.ENFILE, "b"])
    assert accepted == ["a", "b"]
    texts = [r.getMessage() for r in caplog.records]
    assert sum("cannot accept" in t for t in texts) == 2  # once per episode
    assert sum("accepting connections again" in t for t in texts) == 2
    gaps = [round(b - a, 6) for a, b in zip(listener.calls, listener.calls[1:30], strict=False)]
    assert gaps[0] > 0 and all(g <= MAX_PAUSE + 1e-9 for g in gaps)
    assert gaps == sorted(gaps)  # growing pauses, not a spin
    assert len(listener.calls) == 34  # 30 EMFILE in ~25 s of pauses, not thousands; 4 more


async def test_the_listeners_own_failure_ends_it(autojump_clock: trio.testing.MockClock) -> None:
    with pytest.raises(OSError) as e:
        await run_script(["a", errno.EBADF])
    assert e.value.errno == errno.EBADF


def test_fd_limit_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if hard != resource.RLIM_INFINITY:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
        assert raise_fd_limit() == (hard if hard != resource.RLIM_INFINITY else soft)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] in (hard, soft)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
