"""The control socket: QMP's wire protocol to drive a running server (tickets,
channels, sessions, events). `ControlServer` serves it; `ControlClient` speaks it."""

from .client import ControlClient, QmpError
from .commands import CommandError, Commands
from .listener import ControlAddress, ControlServer, parse_control_address

__all__ = [
    "CommandError",
    "Commands",
    "ControlAddress",
    "ControlClient",
    "ControlServer",
    "QmpError",
    "parse_control_address",
]
