"""A bug met while serving one channel ends that connection (logged with its traceback);
a backend that fails is restarted; the server goes on serving everyone else."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from trivmc.backends import EchoBackend
from trivmc.chardev import SpiceChardev
from trivmc.client import connect
from trivmc.protocol import ChannelType
from trivmc.server import Server, ServerConfig

from .test_bad_input import ECHO, settle
from .test_tls import echo


class BuggyEcho(EchoBackend):
    """An echo with a bug: the payload b"boom" makes read() raise."""

    def read(self, data: memoryview) -> None:
        if bytes(data) == b"boom":
            raise RuntimeError("a bug in a backend")
        super().read(data)


class CrashOnce(EchoBackend):
    """An echo whose run() fails the first time."""

    runs = 0

    async def run(self, chardev: SpiceChardev) -> None:
        self.runs += 1
        if self.runs == 1:
            raise RuntimeError("backend failed at start")
        await super().run(chardev)


async def test_a_bug_in_one_channel_ends_only_that_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = Server(ServerConfig(listen=[("127.0.0.1", 0)], key_pool_size=4, multi_session=True))
    server.add_port(ECHO, BuggyEcho())
    server.add_port("org.trivmc.other.0", EchoBackend())
    async with server as addrs:
        uri = f"spice://127.0.0.1:{addrs[0][1]}"  # type: ignore[index]
        async with connect(uri) as bystander, connect(uri) as victim:
            other = await bystander.open_port("org.trivmc.other.0")
            ch = await victim.open_port(ECHO)
            await ch.send_all(b"boom")
            channel = server.channels[(ChannelType.PORT, 0)]
            await settle(lambda: channel.client is None)
            assert "internal error, closing this connection" in caplog.text
            assert "a bug in a backend" in caplog.text  # the traceback is there
            assert await echo(other, b"unharmed") == b"unharmed"
            ch = await victim.open_port(ECHO)  # the channel serves again
            assert await echo(ch, b"fine") == b"fine"
        await settle(lambda: channel.device.idle)


async def test_a_failing_backend_is_restarted(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = ServerConfig(listen=[("127.0.0.1", 0)], key_pool_size=4, key_process=False)
    server = Server(cfg)
    backend = CrashOnce()
    server.add_port(ECHO, backend)
    async with server as addrs:
        await settle(lambda: backend.runs == 2)
        assert "the backend failed, restarting it" in caplog.text
        async with connect(f"spice://127.0.0.1:{addrs[0][1]}") as s:  # type: ignore[index]
            ch = await s.open_port(ECHO)
            assert await echo(ch, b"back") == b"back"
    assert [r for r in caplog.records if r.levelno >= logging.ERROR]
