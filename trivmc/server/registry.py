"""The channel registry: the VMC channels a server hosts, by (type, id), and the task
that runs each one's device and backend.

Channels may be added and removed before or while the server serves. Once `start` ran
(the server is serving), a channel added starts at once; a removed channel's task has
ended and its buffers are released before `remove` returns. A backend that fails is
restarted after a pause that doubles up to BACKEND_RESTART_MAX.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio

from ..backends import Backend
from ..protocol import ChannelType
from .link_policy import ChannelKey
from .vmc import VmcChannel

# the channels' lifecycle is logged as the server's, as it was before this module
log = logging.getLogger("trivmc.server.server")

BACKEND_RESTART_PAUSE = 1.0
BACKEND_RESTART_MAX = 30.0
MAX_CHANNEL_ID = 255


@dataclass
class _ChannelTask:
    """The task running a channel's device and backend: cancel `scope` to stop it.
    `done` is set once, when the task has ended (a one-shot event)."""

    scope: trio.CancelScope
    done: trio.Event


class ChannelRegistry:
    """The hosted VMC channels (`channels`, by key) and their device tasks.

    `on_offered(channel)` is called when a channel becomes offered while serving:
    added available, or its guest side opened again.
    """

    def __init__(self, byte_budget: int, on_offered: Callable[[VmcChannel], None]) -> None:
        self.byte_budget = byte_budget
        self.channels: dict[ChannelKey, VmcChannel] = {}
        self._on_offered = on_offered
        self._tasks: dict[ChannelKey, _ChannelTask] = {}
        self._nursery: trio.Nursery | None = None

    # ---- hosting -----------------------------------------------------------------------

    def add(self, channel: VmcChannel) -> VmcChannel:
        """Host `channel`, before or while serving. While serving, its device and
        backend start at once and, once it is offered, `on_offered` is told of it."""
        if channel.key in self.channels:
            raise ValueError(f"channel {channel.label} is already registered")
        if channel.removed:  # its state went with it: a new VmcChannel takes its place
            raise ValueError(f"channel {channel.label} was removed: host a new one")
        self.channels[channel.key] = channel
        channel.on_available = self._offered
        if self._nursery is not None:
            self._start_channel(self._nursery, channel)
            if channel.available:
                self._offered(channel)
        return channel

    async def remove(self, channel: VmcChannel) -> None:
        """Stop hosting `channel`: its client is closed, its device and backend stop,
        and every buffer it held is released before this returns. New links to it are
        refused from now on (sessions are not told: SPICE has no message for that)."""
        if self.channels.get(channel.key) is not channel:
            raise ValueError(f"channel {channel.label} is not hosted here")
        del self.channels[channel.key]
        channel.removed = True
        channel.disconnect_client()
        task = self._tasks.pop(channel.key, None)
        if task is not None:
            task.scope.cancel()
            await task.done.wait()
        await channel.wait_no_client()
        channel.device.reset()
        log.info("%s: removed", channel.label)

    def _offered(self, channel: VmcChannel) -> None:
        """`channel` became available: tell `on_offered`, if it is still hosted."""
        if self.channels.get(channel.key) is channel and channel.available:
            self._on_offered(channel)

    def _next_id(self, channel_type: ChannelType) -> int:
        """The lowest free id; the wire gives a channel id one byte, so a server holds
        at most 256 channels of a type (ValueError past that)."""
        used = {cid for (t, cid) in self.channels if t == channel_type}
        free = (i for i in range(MAX_CHANNEL_ID + 1) if i not in used)
        cid = next(free, None)
        if cid is None:
            raise ValueError(
                f"no free {channel_type.name.lower()} channel id: a SPICE channel id is one"
                f" byte, so a server holds at most {MAX_CHANNEL_ID + 1} of a type"
            )
        return cid

    def add_usbredir(self, backend: Backend, channel_id: int | None = None) -> VmcChannel:
        """Host a usbredir channel (the lowest free id unless `channel_id` is given)."""
        cid = self._next_id(ChannelType.USBREDIR) if channel_id is None else channel_id
        return self.add(
            VmcChannel(ChannelType.USBREDIR, cid, backend, byte_budget=self.byte_budget)
        )

    def add_port(self, name: str, backend: Backend) -> VmcChannel:
        """Host a port channel named `name` (ValueError if one already has it)."""
        for ch in self.channels.values():
            if ch.channel_type == ChannelType.PORT and ch.chardev.port_name == name:
                raise ValueError(f"port {name!r} is already registered")
        cid = self._next_id(ChannelType.PORT)
        return self.add(
            VmcChannel(ChannelType.PORT, cid, backend, name, byte_budget=self.byte_budget)
        )

    def add_webdav(self, backend: Backend) -> VmcChannel:
        """Host the webdav channel (there is one: id 0)."""
        return self.add(VmcChannel(ChannelType.WEBDAV, 0, backend, byte_budget=self.byte_budget))

    # ---- looking up --------------------------------------------------------------------

    def find(self, name: str) -> VmcChannel:
        """The hosted channel `name` names: a port's name (`org.qemu.monitor.qmp.0`;
        it wins), `usbredir:N` (`usbredir` is `usbredir:0`), `webdav`, or `port:N`.
        LookupError, naming what is hosted, when there is none."""
        kind, sep, cid = name.partition(":")
        types = {"usbredir": ChannelType.USBREDIR, "port": ChannelType.PORT}
        if name == "webdav":
            key: ChannelKey | None = (ChannelType.WEBDAV, 0)
        elif kind in types and (cid.isdigit() or not sep):
            key = (types[kind], int(cid or 0))
        else:
            key = None
        for ch in self.channels.values():
            if ch.channel_type == ChannelType.PORT and ch.chardev.port_name == name:
                return ch
        if key is not None and key in self.channels:
            return self.channels[key]
        hosted = ", ".join(ch.label for ch in self.channels.values()) or "none"
        raise LookupError(f"no hosted channel {name!r} (hosted: {hosted})")

    def offered(self) -> list[ChannelKey]:
        """The channels offered now, sorted (a usbredir channel whose guest side is
        closed is not)."""
        return sorted(key for key, ch in self.channels.items() if ch.available)

    def available(self, key: ChannelKey) -> bool:
        """A VMC channel is hosted under `key` and its backend is open."""
        channel = self.channels.get(key)
        return channel is not None and channel.available

    # ---- running -----------------------------------------------------------------------

    def start(self, nursery: trio.Nursery) -> None:
        """Start every channel's device task in `nursery`; from now until `stop`, a
        channel added starts at once (each channel is started once)."""
        self._nursery = nursery
        for channel in self.channels.values():
            self._start_channel(nursery, channel)

    def stop(self) -> None:
        """The nursery is going away: channels added from now on wait for `start`."""
        self._nursery = None

    def _start_channel(self, nursery: trio.Nursery, channel: VmcChannel) -> None:
        task = _ChannelTask(trio.CancelScope(), trio.Event())
        self._tasks[channel.key] = task
        nursery.start_soon(self._run_channel_device, channel, task)

    async def _run_channel_device(self, channel: VmcChannel, task: _ChannelTask) -> None:
        """Run a channel's char device and backend until it is removed or the server
        stops; a failure is logged, the channel's client is disconnected and the device
        and backend start again after a pause."""
        pause = BACKEND_RESTART_PAUSE
        try:
            with task.scope:
                while True:
                    try:
                        await channel.run()
                        return
                    except Exception as e:
                        log.error(
                            "%s: the backend failed, restarting it in %.0f s",
                            channel.label,
                            pause,
                            exc_info=e,
                        )
                    channel.disconnect_client()
                    await trio.sleep(pause)
                    pause = min(2 * pause, BACKEND_RESTART_MAX)
        finally:
            task.done.set()
