"""Server settings, with the bounds every size and time check uses."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from uuid import UUID

from ..protocol import ChannelType, LinkError

DEFAULT_PORT = 5930
MAX_VMC_MESSAGE = 16 * 1024 * 1024
MAX_MAIN_MESSAGE = 64 * 1024
VMC_BYTE_BUDGET = 4 * 1024 * 1024
MAX_VMC_QUEUE = 2 * 1024 * 1024
MAX_MAIN_QUEUE = 256 * 1024


@dataclass(frozen=True)
class ServerConfig:
    """How a `Server` listens, authenticates and bounds its clients.

    `password=None` disables ticketing (any well-formed ticket is accepted).
    `ticket_expiry` is an absolute `time.time()` after which every ticket is refused.
    Links with a password take fresh keys from a pool of `key_pool_size` (a burst of
    that many links takes no key-making time), made by worker processes, one per
    usable core (`key_process`), or, when that is off or fails, in a thread; links
    without one share a key (`keys.py`).

    Bounds (docs/limits.md says why each is what it is): a message's size
    (`max_vmc_message`, `max_main_message`), client -> device bytes held per VMC
    channel (`vmc_byte_budget`, plus the one message in flight), bytes queued for a
    client before it counts as not reading and is disconnected (`max_vmc_queue`,
    `max_main_queue`), connections still linking (`max_pending_links` in all, the
    oldest dropped for a new one; `max_pending_per_source` per address, refused past
    it), the whole link phase (`link_timeout`). Dead peers: TCP keepalive after
    `tcp_keepalive` idle seconds (None: off), and with `ping_interval` a client that
    answers none of `ping_misses` PINGs in a row is disconnected. Freed heap memory is
    given back to the system every `heap_trim_interval` seconds, and glibc's mmap
    threshold is fixed at 2 MiB for the process (`heap.py` says why; None: neither).

    `name` and `uuid` (the guest's, as QEMU's -name and -uuid) go to every client whose
    main channel has the NAME_AND_UUID capability, right after MAIN_INIT (MAIN_NAME,
    MAIN_UUID), each only when set, as spice-server does.
    """

    listen: list[tuple[str, int]] = field(default_factory=list)
    unix: list[str] = field(default_factory=list)
    password: str | None = None
    ticket_expiry: float | None = None
    multi_session: bool = False
    link_timeout: float = 10.0
    max_vmc_message: int = MAX_VMC_MESSAGE
    max_main_message: int = MAX_MAIN_MESSAGE
    vmc_byte_budget: int = VMC_BYTE_BUDGET
    max_vmc_queue: int = MAX_VMC_QUEUE
    max_main_queue: int = MAX_MAIN_QUEUE
    max_pending_links: int = 512
    max_pending_per_source: int = 32
    tcp_keepalive: float | None = 600.0
    raise_fd_limit: bool = True
    heap_trim_interval: float | None = 10.0
    ping_interval: float | None = None
    ping_misses: int = 3
    key_pool_size: int = 64
    key_process: bool = True
    tls_listen: list[tuple[str, int]] = field(default_factory=list)
    tls: ssl.SSLContext | None = None
    tls_handshake_timeout: float = 10.0
    secure_channels: frozenset[ChannelType] = frozenset()
    plaintext_channels: frozenset[ChannelType] = frozenset()
    websocket: bool = True
    name: str | None = None
    uuid: UUID | None = None

    def __post_init__(self) -> None:
        if self.name is not None and (not isinstance(self.name, str) or "\0" in self.name):
            raise ValueError(f"name must be text without a NUL character, got {self.name!r}")
        if self.uuid is not None and not isinstance(self.uuid, UUID):
            raise ValueError(f"uuid must be a uuid.UUID, got {self.uuid!r}")
        for name in ("max_pending_links", "max_pending_per_source", "ping_misses"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.ping_interval is not None and self.ping_interval <= 0:
            raise ValueError("ping_interval must be positive (None disables pings)")
        if self.vmc_byte_budget < 1:
            raise ValueError("vmc_byte_budget must be at least 1 byte")
        both = self.secure_channels & self.plaintext_channels
        if both:
            names = ", ".join(sorted(CHANNEL_NAMES[t] for t in both))
            raise ValueError(f"channels both secure and plaintext: {names}")
        if self.tls_listen and self.tls is None:
            raise ValueError("a TLS listener needs a TLS context (certificate and key)")

    def link_security(self, channel_type: int, secure: bool) -> LinkError:
        """spice-server's security check: NEED_SECURED for a channel that must use TLS
        and came in plain, NEED_UNSECURED for one that must be plain and came on TLS;
        a channel in neither set may use either port."""
        if not secure and channel_type in self.secure_channels:
            return LinkError.NEED_SECURED
        if secure and channel_type in self.plaintext_channels:
            return LinkError.NEED_UNSECURED
        return LinkError.OK


CHANNEL_NAMES = {
    ChannelType.MAIN: "main",
    ChannelType.USBREDIR: "usbredir",
    ChannelType.PORT: "port",
    ChannelType.WEBDAV: "webdav",
}


def parse_channel_names(text: str) -> frozenset[ChannelType]:
    """`main,port` or `all` (spice-server's --secure-channels vocabulary) as channel
    types; raises ValueError naming an unknown one."""
    by_name = {v: k for k, v in CHANNEL_NAMES.items()}
    out: set[ChannelType] = set()
    for name in (n.strip().lower() for n in text.split(",")):
        if name == "all":
            out.update(by_name.values())
        elif name in by_name:
            out.add(by_name[name])
        elif name:
            raise ValueError(f"unknown channel {name!r} (use {', '.join(by_name)} or all)")
    return frozenset(out)
