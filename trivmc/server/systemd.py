"""Running under systemd: socket activation and readiness notification, stdlib only.

Two small documented protocols (sd_listen_fds(3), sd_notify(3)), done the way
libsystemd does them:

- `listen_fds()` takes the listening sockets the service manager passed: LISTEN_FDS
  descriptors from fd 3 on, meant for this process only when LISTEN_PID is its pid,
  named by LISTEN_FDNAMES (colon-separated; FileDescriptorName= in the .socket unit,
  the socket unit's own name by default).
- `Notifier` sends state lines (READY=1, STATUS=..., STOPPING=1) to NOTIFY_SOCKET, a
  unix datagram socket (abstract when its name starts with '@').

trivmc's naming scheme for the passed sockets (`sort_sockets`):

    tls       a SPICE TLS listener (as --tls-listen; needs --cert)
    control   the QMP control socket (as --control; a unix or loopback TCP socket)
    spice     a plain SPICE listener (as --listen / --unix; WebSocket upgrades too)

A socket without a name of its own (LISTEN_FDNAMES unset, the name "unknown", or the
default name, the socket unit's: anything ending in ".socket") is a plain SPICE
listener. Any other name is an error, so that a misspelt "tls" never becomes a
plaintext port.

No third-party package is used: the protocols are a few lines each; `sdnotify`
(pure Python) does only the notify half and is unmaintained since 2017, and
`systemd-python`/`cysystemd` are C extensions that need libsystemd.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import MutableMapping
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

SD_LISTEN_FDS_START = 3
LISTEN_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
NOTIFY_TIMEOUT = 1.0  # longest a notification may block (the manager's queue is full)
SPICE, TLS, CONTROL = "spice", "tls", "control"
DEFAULT_NAMES = ("", "unknown")  # and any name ending in ".socket"
FAMILIES = frozenset({socket.AF_INET, socket.AF_INET6, socket.AF_UNIX})


class SystemdError(ValueError):
    """What the service manager passed cannot be used; the text is one line naming
    the descriptor or variable at fault."""


@dataclass
class PassedSocket:
    """A listening stream socket the service manager passed, and its name."""

    fd: int
    name: str
    sock: socket.socket  # owns `fd`


def listen_fds(
    environ: MutableMapping[str, str] | None = None, *, unset: bool = True
) -> list[PassedSocket]:
    """The listening sockets passed to this process (sd_listen_fds_with_names).

    Guarantees:
    - [] when LISTEN_PID is unset or another process's pid (the variables were
      inherited, not meant for us), or LISTEN_FDS is 0: nothing is touched then.
    - Otherwise every passed descriptor (3, 4, ...) is checked to be an IPv4, IPv6 or
      unix stream socket that listens (SO_ACCEPTCONN), and is marked close-on-exec so
      that no child process inherits it.
    - SystemdError (one line) for a malformed variable, a count of names that differs
      from LISTEN_FDS, or a descriptor that is not such a socket; the sockets taken
      so far (the bad one included) are closed then.
    - With `unset` (the default) LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES are removed
      from `environ` (os.environ by default) in every case, errors included, so that
      children (exec: backends) never see them.
    """
    env = os.environ if environ is None else environ
    try:
        return _take_fds(env)
    finally:
        if unset:
            for name in LISTEN_VARIABLES:
                env.pop(name, None)


def _take_fds(env: MutableMapping[str, str]) -> list[PassedSocket]:
    pid_text = env.get("LISTEN_PID")
    if pid_text is None:
        return []
    if not pid_text.isdigit():
        raise SystemdError(f"LISTEN_PID is not a process id: {pid_text!r}")
    if int(pid_text) != os.getpid():
        log.debug("LISTEN_PID %s is not this process: its sockets are not ours", pid_text)
        return []
    count_text = env.get("LISTEN_FDS", "0")
    if not count_text.isdigit():
        raise SystemdError(f"LISTEN_FDS is not a count: {count_text!r}")
    count = int(count_text)
    if count == 0:
        return []
    names_text = env.get("LISTEN_FDNAMES")
    names = ["unknown"] * count if names_text is None else names_text.split(":")
    if len(names) != count:
        raise SystemdError(
            f"LISTEN_FDNAMES names {len(names)} sockets ({names_text!r}),"
            f" LISTEN_FDS passes {count}"
        )
    out: list[PassedSocket] = []
    try:
        for i, name in enumerate(names):
            fd = SD_LISTEN_FDS_START + i
            out.append(PassedSocket(fd, name, _listening_socket(fd, name)))
    except BaseException:
        for passed in out:
            passed.sock.close()
        raise
    return out


def _listening_socket(fd: int, name: str) -> socket.socket:
    """The socket at `fd`, close-on-exec, if it is a listening stream socket."""
    what = f"fd {fd} ({name!r}) passed by systemd"
    try:
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
    except OSError as e:
        why = {errno.ENOTSOCK: "is not a socket", errno.EBADF: "is not open"}
        raise SystemdError(f"{what} {why.get(e.errno or 0, f'is unusable: {e}')}") from None
    try:
        if sock.family not in FAMILIES:
            raise SystemdError(f"{what} is not an IPv4, IPv6 or unix socket")
        if sock.type != socket.SOCK_STREAM:
            raise SystemdError(f"{what} is not a stream socket (use ListenStream=)")
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise SystemdError(f"{what} is not listening (the socket unit needs Accept=no)")
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass
class ActivatedSockets:
    """The passed sockets sorted by trivmc's naming scheme (the module doc)."""

    spice: list[socket.socket] = field(default_factory=list)
    tls: list[socket.socket] = field(default_factory=list)
    control: socket.socket | None = None

    @property
    def listeners(self) -> list[tuple[socket.socket, bool]]:
        """The SPICE listeners, each with whether it is TLS (for `Server.serve`)."""
        return [(s, False) for s in self.spice] + [(s, True) for s in self.tls]

    def close(self) -> None:
        for sock in [*self.spice, *self.tls, *([self.control] if self.control else [])]:
            sock.close()


def sort_sockets(passed: list[PassedSocket]) -> ActivatedSockets:
    """Sort passed sockets by name; SystemdError (one line) for an unknown name or a
    second control socket. The sockets are closed when it raises."""
    out = ActivatedSockets()
    try:
        for p in passed:
            name = p.name
            if name == TLS:
                out.tls.append(p.sock)
            elif name == CONTROL:
                if out.control is not None:
                    raise SystemdError(f"fd {p.fd}: a second socket named {CONTROL!r}")
                out.control = p.sock
            elif name == SPICE or name in DEFAULT_NAMES or name.endswith(".socket"):
                out.spice.append(p.sock)
            else:
                raise SystemdError(
                    f"fd {p.fd} passed by systemd is named {name!r}: FileDescriptorName="
                    f" must be {SPICE}, {TLS} or {CONTROL}"
                )
    except BaseException:
        for p in passed:
            p.sock.close()
        raise
    return out


class Notifier:
    """sd_notify(3): state lines to the service manager's NOTIFY_SOCKET.

    Guarantees: `notify` never raises; without a socket it does nothing and returns
    False; a send that fails is logged (warning) and returns False; a send blocks at
    most NOTIFY_TIMEOUT seconds (only while the manager's queue is full). Only an
    absolute path or an abstract name ('@...') is understood; any other address
    (vsock:...) is logged once and ignored.
    """

    def __init__(self, address: str | None) -> None:
        self.address: bytes | None = None
        if not address:
            return
        if address.startswith("@"):
            self.address = b"\0" + os.fsencode(address[1:])
        elif address.startswith("/"):
            self.address = os.fsencode(address)
        else:
            log.warning("NOTIFY_SOCKET %r: not a unix socket, not notifying", address)

    @classmethod
    def from_environment(
        cls, environ: MutableMapping[str, str] | None = None, *, unset: bool = True
    ) -> Notifier:
        """The notifier NOTIFY_SOCKET names; with `unset` the variable is removed, so
        that children (exec: backends) cannot notify in our name."""
        env = os.environ if environ is None else environ
        address = env.pop("NOTIFY_SOCKET", None) if unset else env.get("NOTIFY_SOCKET")
        return cls(address)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """Send `lines` ("READY=1", "STATUS=...") as one datagram; True once sent."""
        if self.address is None:
            return False
        state = "\n".join(lines).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.settimeout(NOTIFY_TIMEOUT)
                s.sendto(state, self.address)
        except OSError as e:
            log.warning("cannot notify systemd (%s): %s", ", ".join(lines), e)
            return False
        return True
