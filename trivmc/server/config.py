"""Server settings, with the bounds every size and time check uses."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_PORT = 5930
MAX_VMC_MESSAGE = 16 * 1024 * 1024
MAX_MAIN_MESSAGE = 64 * 1024


@dataclass(frozen=True)
class ServerConfig:
    """How a `Server` listens, authenticates and bounds its clients.

    `password=None` disables ticketing (any well-formed ticket is accepted).
    `ticket_expiry` is an absolute `time.time()` after which every ticket is refused.
    """

    listen: list[tuple[str, int]] = field(default_factory=list)
    unix: list[str] = field(default_factory=list)
    password: str | None = None
    ticket_expiry: float | None = None
    multi_session: bool = False
    link_timeout: float = 30.0
    max_vmc_message: int = MAX_VMC_MESSAGE
    max_main_message: int = MAX_MAIN_MESSAGE
    ping_interval: float | None = None
    key_pool_size: int = 4
