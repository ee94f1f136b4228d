"""Stream backends: a socket (connect or listen, TCP or unix) or a child process.

One peer stream at a time is bridged to the chardev (`StreamBackend`,
peer_bridge.py): while there is no peer, client data waits in the char device's
queue; the port sees OPENED when a peer is up and CLOSED when it goes. A peer's
failure is logged and never raises out of the backend.

- Connecting backends (tcp:, unix:; connecting.py) and exec: (process.py) open a peer
  for each SPICE client session and close it at the session boundary, so every client
  starts with a fresh peer; bytes the peer did not take by the drain deadline are
  dropped and counted, never carried to another peer.
- Listening backends (tcp-listen:, unix-listen:; listening.py) are one persistent
  pipe: one peer at a time, across client sessions.
- A usbredir channel makes its backend *standing* (connecting.py): it follows QEMU's
  usb-redir, connected while no client is attached, keeping QEMU's first words for the
  next client (early_words.py), with a fresh connection after each session.
- file: (FileBackend) is in simple.py: it has no peer.

This module gathers them under the import path `trivmc.backends.stream`.
"""

from __future__ import annotations

from .connecting import (
    DEFAULT_RECONNECT,
    FIRST_BACKOFF,
    STANDING_FIRST_BACKOFF,
    ConnectingBackend,
    TcpConnectBackend,
    UnixConnectBackend,
)
from .early_words import EARLY_LIMIT, EarlyWords
from .listening import ListeningBackend, TcpListenBackend, UnixListenBackend
from .peer_bridge import DEFAULT_DRAIN, OUT_LIMIT, RECEIVE_SIZE, StreamBackend
from .process import ExecBackend
from .simple import FileBackend

__all__ = [
    "DEFAULT_DRAIN",
    "DEFAULT_RECONNECT",
    "EARLY_LIMIT",
    "FIRST_BACKOFF",
    "OUT_LIMIT",
    "RECEIVE_SIZE",
    "STANDING_FIRST_BACKOFF",
    "ConnectingBackend",
    "EarlyWords",
    "ExecBackend",
    "FileBackend",
    "ListeningBackend",
    "StreamBackend",
    "TcpConnectBackend",
    "TcpListenBackend",
    "UnixConnectBackend",
    "UnixListenBackend",
]
