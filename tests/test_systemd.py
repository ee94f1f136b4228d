"""Running under systemd: socket activation (LISTEN_FDS) and readiness (NOTIFY_SOCKET).

`trivmc serve` runs as systemd runs a service: a wrapper (ACTIVATE) moves the
listening sockets the test bound to fds 3, 4, ... and sets LISTEN_PID to its own pid
before exec'ing `python -m trivmc serve` (exec keeps the pid, as systemd's fork+exec
does); the test is the service manager's notify socket (an abstract unix datagram
socket). Every process started here is killed and reaped by the test.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trustme

from trivmc.backends import EchoBackend
from trivmc.cli import build_parser
from trivmc.client import ChannelStream, connect
from trivmc.control.client import control_client
from trivmc.control.listener import inherited_control_address
from trivmc.server import Server, ServerConfig
from trivmc.server.systemd import (
    Notifier,
    PassedSocket,
    SystemdError,
    listen_fds,
    sort_sockets,
)

ECHO = "org.trivmc.echo.0"
ENV_PORT = "org.test.env.0"
END = b"==END=="
MARK = "TRIVMC_TEST_MARK=present"
# what systemd does between fork and exec: the passed fds at 3, 4, ... and LISTEN_PID
# the pid of the process that execs the service (unless the test set another one)
ACTIVATE = r"""
import fcntl, os, sys
fds = [int(fd) for fd in sys.argv[1].split(",") if fd]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in fds]
for fd in fds:
    os.close(fd)
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i)
    os.close(fd)
os.environ.setdefault("LISTEN_PID", str(os.getpid()))
os.execve(sys.executable, [sys.executable, *sys.argv[2:]], os.environ)
"""


def activation(
    sockets: Sequence[socket.socket | int], names: str | None, *argv: str, **env: str
) -> tuple[list[str], dict[str, str], list[int]]:
    """(command, environment, fds to pass) running `python ARGV` as systemd would."""
    fds = [s if isinstance(s, int) else s.fileno() for s in sockets]
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_"))}
    environ.update(LISTEN_FDS=str(len(fds)), **env)
    if names is not None:
        environ["LISTEN_FDNAMES"] = names
    cmd = [sys.executable, "-c", ACTIVATE, ",".join(map(str, fds)), *argv]
    return cmd, environ, fds


def tcp_listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def port_of(sock: socket.socket) -> int:
    port: int = sock.getsockname()[1]
    return port


@contextmanager
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """The service manager's side: an abstract unix datagram socket, and the
    NOTIFY_SOCKET value naming it."""
    name = f"trivmc-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        yield sock, "@" + name


async def next_state(sock: socket.socket) -> dict[str, str]:
    """The next notification, as {VARIABLE: value}."""
    tsock = trio.socket.from_stdlib_socket(sock)
    with trio.fail_after(30):
        data = await tsock.recv(4096)
    return dict(line.split("=", 1) for line in data.decode().splitlines())


def nothing_notified(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(4096)
    except BlockingIOError:
        return True
    return False


@dataclass
class Running:
    proc: trio.Process
    notify: socket.socket
    out: Path
    err: Path

    def serving_lines(self) -> list[str]:
        return [ln for ln in self.out.read_text().splitlines() if ln.startswith("trivmc: serving")]


@asynccontextmanager
async def serve_activated(
    tmp_path: Path, sockets: Sequence[socket.socket], names: str | None, *argv: str, **env: str
) -> AsyncIterator[Running]:
    """`trivmc serve ARGV` socket-activated with `sockets`; killed and reaped on exit."""
    with notify_socket() as (notify, address):
        cmd, environ, fds = activation(
            sockets, names, "-m", "trivmc", "serve", *argv, NOTIFY_SOCKET=address, **env
        )
        out, err = tmp_path / "stdout", tmp_path / "stderr"
        with out.open("wb") as o, err.open("wb") as e:
            proc = await trio.lowlevel.open_process(
                cmd, env=environ, pass_fds=fds, stdout=o, stderr=e
            )
        try:
            yield Running(proc, notify, out, err)
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


async def echo_through(channel: ChannelStream, data: bytes) -> None:
    await channel.send_all(data)
    got = b""
    with trio.fail_after(10):
        while len(got) < len(data):
            got += await channel.receive_some()
    assert got == data


async def read_until(channel: ChannelStream, marker: bytes) -> bytes:
    got = b""
    with trio.fail_after(10):
        while marker not in got:
            data = await channel.receive_some()
            assert data, f"the channel ended before {marker!r}: {got!r}"
            got += data
    return got


ENV_BACKEND = f'{ENV_PORT}=exec:sh -c "env; echo {END.decode()}"'


async def test_serves_the_passed_socket_ready_once_serving_stopping_on_sigterm(
    tmp_path: Path,
) -> None:
    """The passed socket replaces the default address; READY=1 comes once a client
    can link and echo through it; an exec: backend's environment has no LISTEN_* or
    NOTIFY_SOCKET; SIGTERM sends STOPPING=1 and ends the server cleanly (status 0)."""
    with tcp_listener() as listener:
        port = port_of(listener)
        argv = ("--port", f"{ECHO}=echo", "--port", ENV_BACKEND)
        async with serve_activated(
            tmp_path, [listener], "trivmc.socket", *argv, TRIVMC_TEST_MARK="present"
        ) as run:
            state = await next_state(run.notify)  # the first notification
            assert state["READY"] == "1"
            assert state["STATUS"] == f"serving 127.0.0.1:{port}; 2 channels"
            async with connect(f"spice://127.0.0.1:{port}") as session:
                await echo_through(await session.open_port(ECHO), b"through fd 3" * 1000)
                env = (await read_until(await session.open_port(ENV_PORT), END)).decode()
            assert MARK in env.splitlines()  # the child's whole environment was read
            for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "NOTIFY_SOCKET"):
                assert f"{name}=" not in env
            run.proc.send_signal(signal.SIGTERM)
            state = await next_state(run.notify)
            assert state == {"STOPPING": "1", "STATUS": "stopping (SIGTERM)"}
            with trio.fail_after(10):
                assert await run.proc.wait() == 0
        assert run.serving_lines() == [f"trivmc: serving spice://127.0.0.1:{port}"]
        assert "trivmc: stopped" in run.err.read_text()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    ca = trustme.CA()
    d = tmp_path_factory.mktemp("pki")
    paths = {"ca": d / "ca.pem", "cert": d / "cert.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(paths["cert"]))
    return {k: str(v) for k, v in paths.items()}


async def test_sockets_named_spice_tls_and_control(tmp_path: Path, pki: dict[str, str]) -> None:
    """Names pick the role: a plain SPICE listener, a TLS one (with --cert) and the
    control socket (a unix socket systemd owns: not unlinked at the end); SIGINT sends
    STOPPING=1 too."""
    ctl_path = str(tmp_path / "ctl.sock")
    with (
        tcp_listener() as plain,
        tcp_listener() as tls,
        socket.socket(socket.AF_UNIX) as ctl,
    ):
        ctl.bind(ctl_path)
        ctl.listen()
        async with serve_activated(
            tmp_path, [plain, tls, ctl], "spice:tls:control", "--cert", pki["cert"]
        ) as run:
            state = await next_state(run.notify)
            assert state["READY"] == "1"
            assert state["STATUS"] == (
                f"serving 127.0.0.1:{port_of(plain)}, 127.0.0.1:{port_of(tls)} (TLS); 1 channels"
            )
            uri = f"spice+tls://127.0.0.1:{port_of(tls)}"
            async with connect(uri, ca_file=pki["ca"]) as session:
                await echo_through(await session.open_port(ECHO), b"over TLS on fd 4")
            async with connect(f"spice://127.0.0.1:{port_of(plain)}") as session:
                await echo_through(await session.open_port(ECHO), b"plain on fd 3")
            async with control_client(f"unix:{ctl_path}") as qmp:
                info = await qmp.execute("query-spice")
            assert (info["port"], info["tls-port"]) == (port_of(plain), port_of(tls))
            run.proc.send_signal(signal.SIGINT)
            assert (await next_state(run.notify))["STOPPING"] == "1"
            with trio.fail_after(10):
                assert await run.proc.wait() == 0
        assert os.path.exists(ctl_path)  # the service manager's socket file stays
        out = run.out.read_text()
        assert f"trivmc: control socket unix:{ctl_path}" in out
        assert f"trivmc: serving TLS spice://127.0.0.1?tls-port={port_of(tls)}" in out


async def test_listen_pid_of_another_process_is_ignored(tmp_path: Path) -> None:
    """Variables inherited from another process (LISTEN_PID not ours) are not ours:
    the fd is not served, --listen is bound, and the variables still do not reach
    children."""
    with tcp_listener() as listener:
        argv = ("--listen", "127.0.0.1:0", "--port", f"{ECHO}=echo", "--port", ENV_BACKEND)
        async with serve_activated(
            tmp_path, [listener], "spice", *argv, LISTEN_PID=str(os.getpid())
        ) as run:
            assert (await next_state(run.notify))["READY"] == "1"
            [line] = run.serving_lines()
            uri = line.split()[-1]
            assert uri != f"spice://127.0.0.1:{port_of(listener)}"
            async with connect(uri) as session:
                await echo_through(await session.open_port(ECHO), b"bound by --listen")
                env = (await read_until(await session.open_port(ENV_PORT), END)).decode()
            assert "LISTEN_" not in env and "NOTIFY_SOCKET" not in env
            run.proc.send_signal(signal.SIGTERM)
            with trio.fail_after(10):
                assert await run.proc.wait() == 0


def run_activated(
    sockets: Sequence[socket.socket | int], names: str | None, *argv: str
) -> tuple[subprocess.CompletedProcess[str], bool]:
    """Run `trivmc serve ARGV` activated to its end (an error must end it: the timeout
    would fail the test); also whether nothing was notified."""
    with notify_socket() as (notify, address):
        cmd, environ, fds = activation(
            sockets, names, "-m", "trivmc", "serve", *argv, NOTIFY_SOCKET=address
        )
        r = subprocess.run(
            cmd, env=environ, pass_fds=fds, capture_output=True, text=True, timeout=60
        )
        return r, nothing_notified(notify)


def one_line_error(r: subprocess.CompletedProcess[str], why: str) -> None:
    assert r.returncode == 2, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("trivmc serve: ") and why in lines[0], lines


@pytest.mark.parametrize(
    ("kind", "names", "argv", "why"),
    [
        ("file", None, [], "fd 3 ('unknown') passed by systemd is not a socket"),
        ("udp", "spice", [], "fd 3 ('spice') passed by systemd is not a stream socket"),
        ("unlistened", "spice", [], "is not listening (the socket unit needs Accept=no)"),
        ("tcp", "spice:tls", [], "LISTEN_FDNAMES names 2 sockets ('spice:tls'), LISTEN_FDS"),
        ("tcp", "TLS", [], "is named 'TLS': FileDescriptorName= must be spice, tls or control"),
        ("tcp", "tls", [], "a socket named tls (systemd) needs --cert"),
        ("tcp", "spice", ["--listen", "127.0.0.1:0"], "they replace --listen;"),
        ("tcp", "spice", ["--unix", "/nonexistent/x"], "they replace --unix;"),
        ("unix", "control", ["--control", "unix:/nonexistent/c"], "it replaces --control"),
    ],
)
def test_unusable_activation_exits_2_in_one_line_and_never_ready(
    tmp_path: Path, kind: str, names: str | None, argv: list[str], why: str
) -> None:
    if kind == "file":
        with (tmp_path / "not-a-socket").open("w") as f:
            r, quiet = run_activated([f.fileno()], names, *argv)
    else:
        family = socket.AF_UNIX if kind == "unix" else socket.AF_INET
        udp = socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM
        with socket.socket(family, udp) as sock:
            sock.bind(str(tmp_path / "s") if kind == "unix" else ("127.0.0.1", 0))
            if kind in ("tcp", "unix"):
                sock.listen()
            r, quiet = run_activated([sock], names, *argv)
    one_line_error(r, why)
    assert quiet  # not even READY=1


def test_not_ready_when_the_control_socket_cannot_be_bound() -> None:
    """The control socket cannot be bound: status 2, one line naming it, and READY=1 is
    never sent (it waits for every listener)."""
    with tcp_listener() as listener:
        r, quiet = run_activated([listener], "spice", "--control", "unix:/nonexistent/c")
    assert r.returncode == 2, r
    assert r.stderr.splitlines() == [
        "trivmc serve: cannot listen on /nonexistent/c: No such file or directory"
    ]
    assert quiet


def test_listen_fds_marks_close_on_exec_and_unsets(tmp_path: Path) -> None:
    """In the activated process: fd 3 is inheritable as passed, close-on-exec once
    taken, and the LISTEN_* variables are gone."""
    probe = (
        "import os; from trivmc.server.systemd import listen_fds;"
        "before = os.get_inheritable(3); [p] = listen_fds();"
        "print(before, os.get_inheritable(3), p.fd, p.name, p.sock.getsockname()[1],"
        " sorted(k for k in os.environ if k.startswith('LISTEN_')))"
    )
    with tcp_listener() as listener:
        cmd, environ, fds = activation([listener], "spice", "-c", probe)
        r = subprocess.run(cmd, env=environ, pass_fds=fds, capture_output=True, text=True)
        port = port_of(listener)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "False", "3", "spice", str(port), "[]"]


def test_listen_fds_environment_rules() -> None:
    """Not ours, malformed or inconsistent: nothing is taken, and the variables are
    removed in every case (as sd_listen_fds(unset_environment=1))."""
    env = {"LISTEN_PID": str(os.getppid()), "LISTEN_FDS": "1", "OTHER": "x"}
    assert listen_fds(env) == [] and env == {"OTHER": "x"}
    env = {"LISTEN_PID": str(os.getppid()), "LISTEN_FDS": "1"}
    assert listen_fds(env, unset=False) == [] and "LISTEN_FDS" in env
    assert listen_fds({}) == []
    assert listen_fds({"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "0"}) == []
    for bad, why in (
        ({"LISTEN_PID": "me"}, "LISTEN_PID is not a process id: 'me'"),
        ({"LISTEN_FDS": "-1"}, "LISTEN_FDS is not a count: '-1'"),
        ({"LISTEN_FDS": "1", "LISTEN_FDNAMES": "a:b"}, "LISTEN_FDNAMES names 2 sockets"),
    ):
        env = {"LISTEN_PID": str(os.getpid()), **bad}
        with pytest.raises(SystemdError, match=why):
            listen_fds(env)
        assert env == {}


def test_sort_sockets_naming_scheme() -> None:
    pairs = [socket.socketpair() for _ in range(5)]
    names = ["spice", "trivmc.socket", "unknown", "tls", "control"]
    passed = [
        PassedSocket(3 + i, n, a) for i, (n, (a, _)) in enumerate(zip(names, pairs, strict=True))
    ]
    sorted_ = sort_sockets(passed)
    assert sorted_.spice == [p.sock for p in passed[:3]]
    assert sorted_.tls == [passed[3].sock] and sorted_.control is passed[4].sock
    assert sorted_.listeners == [(p.sock, p.name == "tls") for p in passed[:4]]
    sorted_.close()
    assert all(p.sock.fileno() == -1 for p in passed)
    for bad, why in ((["spice", "tlss"], "named 'tlss'"), (["control"] * 2, "second socket")):
        passed = [PassedSocket(3 + i, n, socket.socket()) for i, n in enumerate(bad)]
        with pytest.raises(SystemdError, match=why):
            sort_sockets(passed)
        assert all(p.sock.fileno() == -1 for p in passed)  # closed
    for _, b in pairs:
        b.close()


def test_notify_to_an_abstract_socket() -> None:
    with notify_socket() as (sock, address):
        assert address.startswith("@")
        env = {"NOTIFY_SOCKET": address}
        notifier = Notifier.from_environment(env)
        assert env == {}  # children cannot notify in our name
        assert notifier.notify("READY=1", "STATUS=serving")
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving"


def test_notify_to_a_path_and_failures(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        env = {"NOTIFY_SOCKET": path}
        assert Notifier.from_environment(env, unset=False).notify("STOPPING=1")
        assert env == {"NOTIFY_SOCKET": path}
        assert sock.recv(4096) == b"STOPPING=1"
    caplog.set_level(logging.WARNING, "trivmc.server.systemd")
    assert not Notifier(path).notify("READY=1")  # nobody listens any more: logged
    assert "cannot notify systemd (READY=1)" in caplog.text
    assert not Notifier(None).enabled and not Notifier(None).notify("READY=1")
    assert not Notifier("vsock:2:1234").enabled  # not understood: logged, ignored
    assert "not a unix socket" in caplog.text


async def test_server_serves_inherited_sockets() -> None:
    """The library side: Server.serve(inherited=...) serves pre-bound sockets, alone
    (no configured address), and takes them over (closed when it ends)."""
    listener = tcp_listener()
    port = port_of(listener)
    server = Server(ServerConfig(key_pool_size=2))
    server.add_port(ECHO, EchoBackend())
    async with trio.open_nursery() as nursery:
        serve = functools.partial(server.serve, inherited=[(listener, False)])
        addresses = await nursery.start(serve)
        assert addresses == [("127.0.0.1", port)] and server.tls_addresses == []
        async with connect(f"spice://127.0.0.1:{port}") as session:
            await echo_through(await session.open_port(ECHO), b"inherited")
        nursery.cancel_scope.cancel()
    assert listener.fileno() == -1


async def test_server_refuses_an_inherited_tls_socket_without_a_context() -> None:
    listener = tcp_listener()
    server = Server(ServerConfig(key_pool_size=2))
    with pytest.raises(ValueError, match="a TLS listener needs a TLS context"):
        await server.serve(inherited=[(listener, True)])
    assert listener.fileno() == -1  # the server owned it: closed


def test_inherited_control_address(tmp_path: Path) -> None:
    with tcp_listener() as tcp, socket.socket(socket.AF_UNIX) as unix:
        unix.bind(str(tmp_path / "c"))
        assert str(inherited_control_address(tcp)) == f"tcp:127.0.0.1:{port_of(tcp)}"
        assert str(inherited_control_address(unix)) == f"unix:{tmp_path / 'c'}"
    with socket.socket(socket.AF_UNIX) as abstract:
        abstract.bind("\0trivmc-test-control")
        assert str(inherited_control_address(abstract)) == "unix:@trivmc-test-control"


UNITS = Path(__file__).resolve().parent.parent / "examples" / "systemd"


def unit_values(path: Path, key: str) -> list[str]:
    """The values of `key=` in a unit file (continuation lines joined)."""
    text = path.read_text().replace("\\\n", " ")
    return [ln.split("=", 1)[1].strip() for ln in text.splitlines() if ln.startswith(key + "=")]


def test_example_units(tmp_path: Path) -> None:
    """The example units: trivmc's socket names, a command line `trivmc serve` takes,
    Type=notify, and (where systemd-analyze exists) no complaint from systemd."""
    service = UNITS / "trivmc.service"
    assert unit_values(service, "Type") == ["notify"]
    names = [n for s in UNITS.glob("*.socket") for n in unit_values(s, "FileDescriptorName")]
    assert sorted(names) == ["control", "spice"]
    [exec_start] = unit_values(service, "ExecStart")
    program, command, *argv = exec_start.replace("${CREDENTIALS_DIRECTORY}", "/c").split()
    assert program.endswith("/trivmc") and command == "serve"
    args = build_parser().parse_args(["serve", *argv])
    assert args.password_file == "/c/ticket" and args.listen is None and args.control is None
    if shutil.which("systemd-analyze") is None:
        return
    for unit in UNITS.iterdir():  # ExecStart= must name an existing program
        text = unit.read_text().replace(program, shutil.which("true") or "/bin/true")
        (tmp_path / unit.name).write_text(text)
    r = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *map(str, sorted(tmp_path.iterdir()))],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r
