"""The control socket's commands: QEMU's names and arguments where QEMU has the
command (set_password, expire_password, query-spice, query-version, query-commands),
trivmc's own for channels and sessions.

Each command checks its arguments (QEMU's error texts: "Parameter 'x' is missing",
"... is unexpected", "... does not accept value ...") and raises `CommandError`; a
command never ends the control connection or the server.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..backends import BackendSpecError, parse_backend
from ..protocol import ChannelType
from ..server import Server, VmcChannel
from ..server.vmc import VmcChannelClient

Args = dict[str, Any]
Handler = Callable[[Args], Awaitable[Any]]

CHANNEL_TYPES = {
    "port": ChannelType.PORT,
    "usbredir": ChannelType.USBREDIR,
    "webdav": ChannelType.WEBDAV,
}


class CommandError(Exception):
    """A command refused: `cls` is the QMP error class, the text its desc."""

    def __init__(self, desc: str, cls: str = "GenericError") -> None:
        super().__init__(desc)
        self.cls = cls


@dataclass(frozen=True)
class Param:
    name: str
    kind: type | tuple[type, ...]
    required: bool = True
    choices: tuple[str, ...] = ()


def check_args(args: Args, params: tuple[Param, ...]) -> Args:
    """`args` checked against `params`: every required one present, none unknown,
    each of its type (bool is not an int) and, for enums, one of the choices."""
    known = {p.name for p in params}
    for name in args:
        if name not in known:
            raise CommandError(f"Parameter '{name}' is unexpected")
    for p in params:
        if p.name not in args:
            if p.required:
                raise CommandError(f"Parameter '{p.name}' is missing")
            continue
        value = args[p.name]
        kinds = p.kind if isinstance(p.kind, tuple) else (p.kind,)
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            expected = " or ".join(k.__name__ for k in kinds)
            raise CommandError(f"Parameter '{p.name}' expects {expected}")
        if p.choices and value not in p.choices:
            raise CommandError(f"Parameter '{p.name}' does not accept value '{value}'")
    return args


def parse_expiry(text: str, now: float) -> float | None:
    """expire_password's `time`: "now", "never", "+SECONDS" or an absolute time_t."""
    if text == "now":
        return now
    if text == "never":
        return None
    try:
        if text.startswith("+"):
            return now + int(text[1:])
        return float(int(text))
    except ValueError:
        raise CommandError(
            f"Parameter 'time' does not accept value '{text}'"
            " (now, never, +SECONDS or seconds since the epoch)"
        ) from None


def channel_counters(channel: VmcChannel) -> dict[str, Any]:
    device = channel.device
    st = device.stats
    client = channel.client
    return {
        "in-data": st.in_data,
        "in-compressed": st.in_compressed,
        "in-decompressed": st.in_decompressed,
        "out-data": st.out_data,
        "out-compressed": st.out_compressed,
        "out-uncompressed": st.out_uncompressed,
        "written": st.written,
        "read": st.read,
        "buffered-bytes": device.buffered_bytes,
        "tokens-in-use": device.total_tokens - device.tokens_free,
        "queued-to-client": client.queued_bytes if client is not None else 0,
        "dropped-at-boundary": channel.bytes_dropped,
        "clients-served": channel.clients_served,
        "clients-refused": channel.clients_refused,
    }


class Commands:
    """The command table of one server; `run(name, args)` executes one command."""

    def __init__(self, server: Server, version: tuple[int, int, int], package: str) -> None:
        self.server = server
        self.version = version
        self.package = package
        # set by a command that must wait for its reply to be sent (handover: the
        # server stops after it); taken by the connection that ran it
        self.after_reply: Callable[[], None] | None = None
        self.table: dict[str, tuple[tuple[Param, ...], Handler]] = {
            "query-version": ((), self.query_version),
            "query-commands": ((), self.query_commands),
            "query-spice": ((), self.query_spice),
            "set_password": (
                (
                    Param("protocol", str, choices=("spice", "vnc")),
                    Param("password", str),
                    Param("connected", str, False, ("keep", "disconnect", "fail")),
                    Param("display", str, False),
                ),
                self.set_password,
            ),
            "expire_password": (
                (
                    Param("protocol", str, choices=("spice", "vnc")),
                    Param("time", str),
                    Param("display", str, False),
                ),
                self.expire_password,
            ),
            "query-channels": ((), self.query_channels),
            "query-sessions": ((), self.query_sessions),
            "add-channel": (
                (
                    Param("type", str, choices=tuple(CHANNEL_TYPES)),
                    Param("backend", str),
                    Param("name", str, False),
                    Param("id", int, False),
                ),
                self.add_channel,
            ),
            "remove-channel": (
                (
                    Param("type", str, False, tuple(CHANNEL_TYPES)),
                    Param("id", int, False),
                    Param("name", str, False),
                ),
                self.remove_channel,
            ),
            "disconnect-session": ((Param("connection-id", int),), self.disconnect_session),
            "handover": (
                (
                    Param("to", str),
                    Param("host", str, False),
                    Param("connect-timeout", (int, float), False),
                ),
                self.handover,
            ),
        }

    async def run(self, name: str, args: Args) -> Any:
        """Run command `name` with `args` checked against its parameters; its return
        value, or CommandError (CommandNotFound for an unknown name)."""
        entry = self.table.get(name)
        if entry is None:
            raise CommandError(f"The command {name} has not been found", "CommandNotFound")
        params, handler = entry
        return await handler(check_args(args, params))

    # ---- QEMU's commands -----------------------------------------------------------

    async def query_version(self, args: Args) -> Any:
        """QEMU's VersionInfo: trivmc's version as qemu major/minor/micro, and package."""
        major, minor, micro = self.version
        return {"qemu": {"major": major, "minor": minor, "micro": micro}, "package": self.package}

    async def query_commands(self, args: Args) -> Any:
        """Every command this socket answers, as QEMU lists them (`{"name": ...}`)."""
        return [{"name": name} for name in ("qmp_capabilities", *self.table)]

    async def query_spice(self, args: Args) -> Any:
        """QEMU's SpiceInfo: where the server listens, its auth, the linked channels."""
        server = self.server
        plain = [a for a in server.addresses if isinstance(a, tuple)]
        tls = [a for a in server.tls_addresses if isinstance(a, tuple)]
        first = (plain or tls)[0] if plain or tls else None
        info: dict[str, Any] = {
            "enabled": True,
            "migrated": False,
            "auth": server.auth,
            "compiled-version": "trivmc " + self.package,
            "mouse-mode": "server",
            "channels": [entry.info() for entry in server.events.linked.values()],
        }
        if first is not None:
            info["host"] = str(first[0])
        if plain:
            info["port"] = int(plain[0][1])
        if tls:
            info["tls-port"] = int(tls[0][1])
        return info

    async def set_password(self, args: Args) -> Any:
        """QEMU's set_password for protocol "spice": `Server.set_password`."""
        if args["protocol"] != "spice":
            raise CommandError("trivmc serves SPICE only: protocol must be 'spice'")
        try:
            self.server.set_password(args["password"], args.get("connected", "keep"))
        except ValueError as e:
            raise CommandError(str(e)) from None
        return {}

    async def expire_password(self, args: Args) -> Any:
        """QEMU's expire_password for protocol "spice": `time` is now, never, +SECONDS
        or an absolute time_t."""
        if args["protocol"] != "spice":
            raise CommandError("trivmc serves SPICE only: protocol must be 'spice'")
        self.server.expire_password(parse_expiry(args["time"], time.time()))
        return {}

    # ---- trivmc's own --------------------------------------------------------------

    async def query_channels(self, args: Args) -> Any:
        """Every hosted channel: type, id, label, whether offered, its client and counters."""
        out = []
        for channel in self.server.channels.values():
            client = channel.client
            item: dict[str, Any] = {
                "type": channel.channel_type.name.lower(),
                "id": channel.channel_id,
                "label": channel.label,
                "available": channel.available,
                "counters": channel_counters(channel),
                "client": None,
            }
            if channel.channel_type != ChannelType.USBREDIR:
                item["name"] = channel.chardev.port_name
            if isinstance(client, VmcChannelClient):
                item["client"] = {"peer": client.name, "connection-id": client.connection_id}
            out.append(item)
        return out

    async def query_sessions(self, args: Args) -> Any:
        """Every live session by connection-id, with its linked channels."""
        sessions: dict[int, list[dict[str, Any]]] = {
            s.connection_id: [] for s in self.server.sessions
        }
        for entry in self.server.events.linked.values():
            sessions.setdefault(entry.connection_id, []).append(entry.info())
        return [{"connection-id": cid, "channels": chans} for cid, chans in sessions.items()]

    async def add_channel(self, args: Args) -> Any:
        """Host a new channel (type, backend spec, name for a port) while serving."""
        kind = args["type"]
        try:
            backend = parse_backend(args["backend"])()
        except BackendSpecError as e:
            raise CommandError(f"bad backend: {e}") from None
        try:
            if kind == "port":
                if "name" not in args:
                    raise CommandError("Parameter 'name' is missing (a port needs a name)")
                channel = self.server.add_port(args["name"], backend)
            elif kind == "usbredir":
                channel = self.server.add_usbredir(backend, args.get("id"))
            else:
                channel = self.server.add_webdav(backend)
        except ValueError as e:
            raise CommandError(str(e)) from None
        return {"type": kind, "id": channel.channel_id, "label": channel.label}

    def _find(self, args: Args) -> VmcChannel:
        if "name" in args:
            for channel in self.server.channels.values():
                if channel.is_port and channel.chardev.port_name == args["name"]:
                    return channel
            raise CommandError(f"no channel named '{args['name']}'")
        if "type" not in args:
            raise CommandError("give 'name', or 'type' (and 'id')")
        key = (int(CHANNEL_TYPES[args["type"]]), args.get("id", 0))
        found = self.server.channels.get(key)
        if found is None:
            raise CommandError(f"no channel {args['type']}:{key[1]}")
        return found

    async def remove_channel(self, args: Args) -> Any:
        """Stop hosting a channel (`Server.remove_channel`); its label."""
        channel = self._find(args)
        await self.server.remove_channel(channel)
        return {"label": channel.label}

    async def disconnect_session(self, args: Args) -> Any:
        """Close the session `connection-id` and its channels; an error if none."""
        cid = args["connection-id"]
        if not self.server.disconnect_session(cid):
            raise CommandError(f"no session with connection-id {cid}")
        return {}

    async def handover(self, args: Args) -> Any:
        """Hand every session, listener and backend peer to the server waiting at the
        handover socket `to` (docs/handover.md); this server stops serving after it."""
        from ..server.handover import HandoverFailed, hand_over

        try:
            report = await hand_over(
                self.server,
                args["to"],
                host=args.get("host"),
                connect_timeout=float(args.get("connect-timeout", 10.0)),
            )
        except (OSError, ValueError, HandoverFailed) as e:
            raise CommandError(f"handover to {args['to']} failed: {e}") from e
        self.after_reply = self.server.done.set  # `trivmc serve` ends once answered
        return report.as_dict()
