"""The char device (spice-server's RedCharDevice) and the QEMU-style chardev frontend.

See docs/chardev.md for ownership and the record file format.
"""

from .buffer import WriteBuffer
from .device import CLIENT_QUEUE_LIMIT, MAX_READ, RETRY_INTERVAL, VMC_TOKENS, CharDevice
from .frontend import PENDING_LIMIT, SpiceChardev
from .interface import (
    CharBackend,
    ChrEvent,
    DeviceClient,
    DeviceInstance,
    DeviceSubtype,
    DeviceWakeups,
)
from .stats import DeviceStats

__all__ = [
    "CLIENT_QUEUE_LIMIT",
    "MAX_READ",
    "PENDING_LIMIT",
    "RETRY_INTERVAL",
    "VMC_TOKENS",
    "CharBackend",
    "CharDevice",
    "ChrEvent",
    "DeviceClient",
    "DeviceInstance",
    "DeviceStats",
    "DeviceSubtype",
    "DeviceWakeups",
    "SpiceChardev",
    "WriteBuffer",
]
