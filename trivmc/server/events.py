"""What the server tells its observers (the control socket): QEMU's SPICE_CONNECTED,
SPICE_INITIALIZED and SPICE_DISCONNECTED events, and the linked channels that
`query-spice` lists, in the shapes QEMU's QMP uses (ui.json: SpiceBasicInfo,
SpiceServerInfo, SpiceChannel).

A listener is a plain callable; it must not block or raise (one that raises is logged
and dropped, so an observer can never cost a connection).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

Listener = Callable[[str, dict[str, Any]], None]


def basic_info(family: int, addr: object) -> dict[str, Any]:
    """SpiceBasicInfo: host, port (a string, as QEMU gives it) and family."""
    if family == socket.AF_UNIX or not isinstance(addr, tuple):
        return {"host": str(addr or ""), "port": "", "family": "unix"}
    name = "ipv6" if family == socket.AF_INET6 else "ipv4"
    return {"host": str(addr[0]), "port": str(addr[1]), "family": name}


@dataclass
class LinkedChannel:
    """One linked channel connection, as `query-spice` lists it (SpiceChannel)."""

    client: dict[str, Any]
    connection_id: int
    channel_type: int
    channel_id: int
    tls: bool

    def info(self) -> dict[str, Any]:
        return {
            **self.client,
            "connection-id": self.connection_id,
            "channel-type": self.channel_type,
            "channel-id": self.channel_id,
            "tls": self.tls,
        }


class EventHub:
    """Listeners of server events, and the channel connections linked now."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self.linked: dict[int, LinkedChannel] = {}  # by connection serial
        self._serial = 0

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Add `listener`; the returned callable removes it (once; later calls do
        nothing)."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def next_serial(self) -> int:
        self._serial += 1
        return self._serial

    def emit(self, name: str, data: dict[str, Any]) -> None:
        for listener in list(self._listeners):
            try:
                listener(name, data)
            except Exception:
                log.exception("event listener failed: dropped")
                if listener in self._listeners:
                    self._listeners.remove(listener)
