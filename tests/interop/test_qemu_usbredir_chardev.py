"""What QEMU's `-device usb-redir` does on its socket chardev, measured with a bare TCP
client standing where trivmc's `--usbredir tcp:` backend stands. trivmc's gateway is
built on these facts (issue 16 item 2 leans on each of them):

- QEMU sends its usbredir hello at once on every connection, before it has received
  anything; each new connection gets a new parser and a new hello.
- While one connection is up a second one is accepted by the kernel (the TCP connect
  succeeds) but QEMU reads nothing from it and sends it nothing until the first closes.
- `device_del` deletes the chardev with the device: the connection gets a FIN and the
  port stops listening.
- `chardev-add` listens at once, but a connection sees no hello until `device_add`.
"""

from __future__ import annotations

import struct
import time

import pytest
import trio

from .tools import listening_socket, qemu

HELLO_HEADER = struct.Struct("<III")  # type, length, id: 32-bit ids before the hellos
HELLO_LEN = HELLO_HEADER.size + 64 + 4  # version string, one 32-bit caps word


async def hello(stream: trio.SocketStream, timeout: float = 5.0) -> bytes:
    """Read QEMU's usbredir hello (and check that it is one)."""
    buf = b""
    with trio.fail_after(timeout):
        while len(buf) < HELLO_LEN:
            data = await stream.receive_some(HELLO_LEN - len(buf))
            assert data, f"EOF after {buf!r}"
            buf += data
    kind, length, _ = HELLO_HEADER.unpack_from(buf)
    assert (kind, length) == (0, HELLO_LEN - HELLO_HEADER.size), buf.hex()
    assert buf[HELLO_HEADER.size :].startswith(b"qemu usb-redir guest"), buf
    return buf


async def nothing_within(stream: trio.SocketStream, seconds: float) -> None:
    """Nothing arrives (and the connection stays up) for `seconds`."""
    with trio.move_on_after(seconds):
        data = await stream.receive_some(4096)
        pytest.fail(f"unexpected {data!r}")


async def connect(port: int) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", port)


async def test_qemu_usb_redir_socket_chardev_facts() -> None:
    # SO_REUSEADDR: QEMU's own listener rebinds the port after device_del
    redir = listening_socket(reuse_addr=True)
    port = redir.getsockname()[1]
    args = [
        "-machine", "pc", "-device", "qemu-xhci",
        "-chardev", f"socket,id=ur0,fd={redir.fileno()},server=on,wait=off",
        "-device", "usb-redir,chardev=ur0,id=redir0",
    ]  # fmt: skip
    ms: dict[str, float] = {}
    with trio.fail_after(50):
        async with qemu(args, pass_fds=[redir.fileno()]) as qmp:
            redir.close()
            # a hello at once, unasked; again on a new connection
            t0 = time.monotonic()
            c1 = await connect(port)
            await hello(c1)
            ms["hello after connect"] = time.monotonic() - t0
            await c1.aclose()
            t0 = time.monotonic()
            c2 = await connect(port)
            await hello(c2)
            ms["hello after reconnect"] = time.monotonic() - t0
            # a second connection waits in the backlog until the first closes
            c3 = await connect(port)
            await nothing_within(c3, 0.2)
            t0 = time.monotonic()
            await c2.aclose()
            await hello(c3)
            ms["queued connection's hello after the first closed"] = time.monotonic() - t0
            # device_del: FIN on the connection, the port closes
            t0 = time.monotonic()
            await qmp.command("device_del", id="redir0")
            with trio.fail_after(5):
                assert await c3.receive_some(4096) == b""
            ms["FIN after device_del"] = time.monotonic() - t0
            await c3.aclose()
            assert "ur0" not in await qmp.hmp("info chardev")
            with pytest.raises(OSError):
                await connect(port)
            # chardev-add listens at once; the hello waits for device_add
            await qmp.command(
                "chardev-add",
                id="ur0",
                backend={
                    "type": "socket",
                    "data": {
                        "addr": {"type": "inet", "data": {"host": "127.0.0.1", "port": str(port)}},
                        "server": True,
                        "wait": False,
                    },
                },
            )
            c4 = await connect(port)
            await nothing_within(c4, 0.2)
            t0 = time.monotonic()
            await qmp.command("device_add", driver="usb-redir", chardev="ur0", id="redir0")
            await hello(c4)
            ms["hello after device_add"] = time.monotonic() - t0
            await c4.aclose()
    print("; ".join(f"{k}: {v * 1e3:.1f} ms" for k, v in ms.items()))
