"""USB redirection for a VM whose QEMU has no SPICE display: SPICE usbredir channels
in front, QEMU `-device usb-redir` sockets behind.

Start QEMU with one usb-redir device per channel, each on a chardev socket:

    qemu-system-x86_64 ... -device qemu-xhci \\
      -chardev socket,id=ur0,host=127.0.0.1,port=4000,server=on,wait=off \\
      -device usb-redir,chardev=ur0,id=redir0 \\
      -chardev socket,id=ur1,host=127.0.0.1,port=4001,server=on,wait=off \\
      -device usb-redir,chardev=ur1,id=redir1

then this gateway, then a SPICE client:

    python examples/usbredir_gateway.py 127.0.0.1:4000 127.0.0.1:4001
    remote-viewer spice://127.0.0.1:5930     # File > USB device selection

Each SPICE client gets a fresh connection to QEMU (its usb-redir device resets when the
client leaves); a QEMU that is not up yet is retried with a bounded backoff.
"""

from __future__ import annotations

import argparse
import logging

import trio

from trivmc.backends import TcpConnectBackend
from trivmc.server import Server, ServerConfig


async def main(targets: list[str], listen: str, password: str | None) -> None:
    host, _, port = listen.rpartition(":")
    server = Server(ServerConfig(listen=[(host, int(port))], password=password))
    for target in targets:
        qhost, _, qport = target.rpartition(":")
        server.add_usbredir(TcpConnectBackend(qhost, int(qport), reconnect=2.0))
    async with server as addresses:
        print(f"usbredir gateway on spice://{host}:{addresses[0][1]}", flush=True)  # type: ignore[index]
        await trio.sleep_forever()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("targets", nargs="+", metavar="HOST:PORT", help="QEMU usb-redir sockets")
    p.add_argument("--listen", default="127.0.0.1:5930")
    p.add_argument("--password")
    a = p.parse_args()
    try:
        trio.run(main, a.targets, a.listen, a.password)
    except KeyboardInterrupt:
        pass
