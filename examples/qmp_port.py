"""A SPICE port channel `org.qemu.monitor.qmp.0` bridged to a QEMU QMP unix socket, so a
SPICE client reaches QMP through trivmc.

    qemu-system-x86_64 ... -qmp unix:/tmp/qmp.sock,server=on,wait=off
    python examples/qmp_port.py /tmp/qmp.sock
    printf '{"execute":"qmp_capabilities"}\\n{"execute":"query-status"}\\n' \\
      | trivmc connect spice://127.0.0.1:5930 --port org.qemu.monitor.qmp.0

Each SPICE client gets its own QMP connection (and so its own greeting).
"""

from __future__ import annotations

import argparse
import logging

import trio

from trivmc.backends import UnixConnectBackend
from trivmc.server import Server, ServerConfig

QMP_PORT = "org.qemu.monitor.qmp.0"


async def main(qmp_path: str, host: str, port: int, password: str | None) -> None:
    server = Server(ServerConfig(listen=[(host, port)], password=password))
    server.add_port(QMP_PORT, UnixConnectBackend(qmp_path, reconnect=2.0))
    async with server as addresses:
        print(f"QMP on spice://{host}:{addresses[0][1]} port {QMP_PORT}", flush=True)  # type: ignore[index]
        await trio.sleep_forever()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("qmp_socket")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5930)
    p.add_argument("--password")
    a = p.parse_args()
    try:
        trio.run(main, a.qmp_socket, a.host, a.port, a.password)
    except KeyboardInterrupt:
        pass
