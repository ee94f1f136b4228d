"""Idle sessions hold no payload: once the bytes of a burst are delivered, no suspended
task (channel reader or sender, device writer, backend bridge) keeps the last chunk it
handled alive. With a thousand sessions, one dead chunk each was hundreds of MiB."""

from __future__ import annotations

import tracemalloc

import trio
import trio.testing

from trivmc.backends import EchoBackend, parse_backend
from trivmc.client import connect
from trivmc.protocol import ChannelType
from trivmc.server import Server, ServerConfig

from .test_tls import echo

SESSIONS = 8
BURST = bytes(range(256)) * 1024  # 256 KiB, in writes the server reads in big chunks


async def echo_peer(listener: trio.SocketListener) -> None:
    async def one(stream: trio.SocketStream) -> None:
        async with stream:
            while data := await stream.receive_some(1 << 16):
                await stream.send_all(data)

    await trio.serve_listeners(one, [listener])


def largest_held_by_trivmc(snapshot: tracemalloc.Snapshot) -> int:
    """The largest block still allocated at one of trivmc's lines: a payload chunk is
    tens to hundreds of KiB; trivmc's own objects are small. The run's shared receive
    buffers (transport/plainsocket.py: at most 4, whatever the number of sessions) are
    not a session's and are left out."""
    mine = snapshot.filter_traces(
        [
            tracemalloc.Filter(True, "*/trivmc/*"),
            tracemalloc.Filter(False, "*/trivmc/transport/plainsocket.py"),
        ]
    )
    return max((trace.size for trace in mine.traces), default=0)


async def test_idle_sessions_keep_no_chunk_alive() -> None:
    async with trio.open_nursery() as nursery:
        (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        nursery.start_soon(echo_peer, listener)
        peer_port = listener.socket.getsockname()[1]
        server = Server(ServerConfig(listen=[("127.0.0.1", 0)], multi_session=True))
        names = []
        for i in range(SESSIONS):
            names.append(f"org.trivmc.idle.{i}")
            if i % 2:
                server.add_port(names[-1], parse_backend(f"tcp:127.0.0.1:{peer_port}")())
            else:
                server.add_port(names[-1], EchoBackend())
        tracemalloc.start()
        try:
            async with server as addrs, trio.open_nursery() as clients:
                uri = f"spice://127.0.0.1:{addrs[0][1]}"  # type: ignore[index]
                done, measured = trio.Semaphore(0), trio.Event()

                async def session(i: int) -> None:
                    async with connect(uri, lz4=i % 4 == 0) as s:
                        port = await s.open_channel(ChannelType.PORT, i)  # names[i]
                        assert await port.wait_port_init() == names[i]
                        with trio.fail_after(30):
                            while i % 2 and port.opened is not True:
                                await port.next_event()  # the tcp: peer is up
                        assert await echo(port, BURST) == BURST
                        done.release()
                        await measured.wait()  # idle, linked, until measured

                for i in range(SESSIONS):
                    clients.start_soon(session, i)
                for _ in range(SESSIONS):
                    await done.acquire()
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                largest = largest_held_by_trivmc(tracemalloc.take_snapshot())
                measured.set()
        finally:
            tracemalloc.stop()
        assert largest < 16 * 1024, largest  # no chunk of the bursts is left
        nursery.cancel_scope.cancel()
