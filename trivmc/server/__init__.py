"""The trivmc SPICE server: link, sessions, main channel and VMC channels."""

from .channel import ChannelClient, ChannelOptions
from .config import ServerConfig
from .main_channel import MainChannelClient, MigrationOutcome
from .server import Server, running_server
from .session import ServerSession, SessionTable
from .vmc import VmcChannel, VmcChannelClient

__all__ = [
    "ChannelClient",
    "ChannelOptions",
    "MainChannelClient",
    "MigrationOutcome",
    "Server",
    "ServerConfig",
    "ServerSession",
    "SessionTable",
    "VmcChannel",
    "VmcChannelClient",
    "running_server",
]
