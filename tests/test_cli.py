"""The `trivmc serve` command line: defaults, --config merging, errors."""

from __future__ import annotations

import importlib.metadata
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path
from uuid import UUID

import pytest
import trio

from trivmc.cli import build_parser, main
from trivmc.cli.replay import close_recordings
from trivmc.cli.serve import build_server, merge_config, stats_lines
from trivmc.client import connect

from .interop.tools import LineReader


def serve_args(*argv: str) -> object:
    return merge_config(build_parser().parse_args(["serve", *argv]))


def test_demo_default() -> None:
    server = build_server(serve_args())  # type: ignore[arg-type]
    assert server.config.listen == [("127.0.0.1", 5930)]
    assert server.password is None
    [ch] = server.channels.values()
    assert ch.chardev.port_name == "org.trivmc.echo.0"


def test_config_file_and_override(tmp_path: Path) -> None:
    conf = tmp_path / "t.toml"
    conf.write_text(
        'listen = "127.0.0.1:7000"\npassword = "pw"\nusbredir = ["null", "echo"]\n'
        '[port]\n"org.a.0" = "echo"\n"org.b.0" = "source:10"\n'
    )
    server = build_server(serve_args("--config", str(conf)))  # type: ignore[arg-type]
    assert server.config.listen == [("127.0.0.1", 7000)] and server.password == b"pw"
    assert sorted(server.channels) == [(9, 0), (9, 1), (10, 0), (10, 1)]
    server = build_server(  # type: ignore[arg-type]
        serve_args("--config", str(conf), "--listen", "127.0.0.1:7001", "--disable-ticketing")
    )
    assert server.config.listen == [("127.0.0.1", 7001)] and server.password is None
    assert len(stats_lines(server)) == 4


def test_config_file_names_a_password_file_and_the_control_socket(tmp_path: Path) -> None:
    """Every setting merge_config reads from a file is one the file may hold."""
    (tmp_path / "ticket").write_text("from-file\n")
    conf = tmp_path / "t.toml"
    conf.write_text(
        f'password_file = "{tmp_path / "ticket"}"\ncontrol = "unix:{tmp_path / "c.sock"}"\n'
    )
    args = serve_args("--config", str(conf))
    assert args.password == "from-file"  # type: ignore[attr-defined]
    assert args.control == f"unix:{tmp_path / 'c.sock'}"  # type: ignore[attr-defined]


def test_bad_config_and_backend(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "bad.toml"
    conf.write_text("nonsense = 1\n")
    assert main(["serve", "--config", str(conf)]) == 2
    assert main(["serve", "--port", "x=warp:9"]) == 2
    assert "unknown backend" in capsys.readouterr().err


def test_help_shows_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    for use in ("--usbredir tcp:", "org.qemu.monitor.qmp.0", "--config", "exec:"):
        assert use in out


def test_tls_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import trustme

    from trivmc.protocol import ChannelType

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    pem = tmp_path / "server.pem"  # certificate and key in one file, as --key allows
    pem.write_bytes(cert.private_key_and_cert_chain_pem.bytes())
    conf = tmp_path / "tls.toml"
    conf.write_text(f'tls_listen = "127.0.0.1:5931"\ncert = "{pem}"\nsecure_channels = "all"\n')
    server = build_server(serve_args("--config", str(conf)))  # type: ignore[arg-type]
    assert server.config.tls_listen == [("127.0.0.1", 5931)] and server.config.tls is not None
    assert ChannelType.MAIN in server.config.secure_channels
    assert ChannelType.WEBDAV in server.config.secure_channels
    args = ("--tls-listen", "127.0.0.1:0", "--cert", str(pem))
    server = build_server(serve_args(*args, "--plaintext-channels", "usbredir, port"))  # type: ignore[arg-type]
    assert server.config.plaintext_channels == {ChannelType.USBREDIR, ChannelType.PORT}
    assert server.config.secure_channels == frozenset() and server.config.websocket
    assert not build_server(serve_args("--no-websocket")).config.websocket  # type: ignore[arg-type]
    for bad, why in (
        (["--tls-listen", "127.0.0.1:0"], "needs --cert"),
        (["--secure-channels", "port"], "needs a TLS listener"),
        ([*args, "--secure-channels", "display"], "unknown channel 'display'"),
        ([*args, "--secure-channels", "port", "--plaintext-channels", "port"], "both secure"),
        (["--tls-listen", "127.0.0.1:0", "--cert", str(tmp_path / "none.pem")], "cannot load"),
    ):
        assert main(["serve", *bad]) == 2
        assert why in capsys.readouterr().err


def serve_process(*argv: str) -> subprocess.CompletedProcess[str]:
    """`trivmc serve ARGV` in its own process: an error must end it (the timeout would
    fail the test), with status 2 and one line."""
    return subprocess.run(
        [sys.executable, "-m", "trivmc", "serve", *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_line_error(r: subprocess.CompletedProcess[str], why: str) -> None:
    assert r.returncode == 2, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("trivmc serve: ") and why in lines[0], lines


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["--listen", "127.0.0.1:99999"], "port 99999 out of range"),
        (["--listen", "no-such-host.invalid:5930"], "cannot listen on no-such-host.invalid"),
        (["--tls-listen", "127.0.0.1:0", "--cert", "/nonexistent/cert.pem"], "No such file"),
        (["--tls-listen", "127.0.0.1:0", "--cert", __file__], "cannot load the TLS"),
    ],
    ids=["port-out-of-range", "unresolvable", "missing-cert", "not-a-cert"],
)
def test_bad_addresses_and_certificates_exit_2_in_one_line(argv: list[str], why: str) -> None:
    one_line_error(serve_process(*argv), why)


def test_address_in_use_exits_2() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = serve_process("--listen", f"127.0.0.1:{port}")
    one_line_error(r, f"cannot listen on 127.0.0.1:{port}: Address already in use")


def test_control_socket_that_cannot_be_made_exits_2_in_one_line() -> None:
    r = serve_process("--listen", "127.0.0.1:0", "--control", "unix:/nonexistent/dir/c.sock")
    one_line_error(r, "cannot listen on /nonexistent/dir/c.sock: No such file")
    r = serve_process("--listen", "127.0.0.1:0", "--control", "tcp:10.1.2.3:4444")
    one_line_error(r, "loopback only")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"trivmc {importlib.metadata.version('trivmc')}"


def test_limit_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = (
        "--ping-interval", "30", "--ping-misses", "4", "--keepalive", "0",
        "--max-pending-links", "100", "--max-pending-per-source", "5", "--byte-budget", "1M",
    )  # fmt: skip
    cfg = build_server(serve_args(*args)).config  # type: ignore[arg-type]
    assert (cfg.ping_interval, cfg.ping_misses, cfg.tcp_keepalive) == (30, 4, None)
    assert (cfg.max_pending_links, cfg.max_pending_per_source) == (100, 5)
    assert cfg.vmc_byte_budget == 1 << 20
    assert build_server(serve_args()).config.tcp_keepalive == 600  # type: ignore[arg-type]
    conf = tmp_path / "limits.toml"
    conf.write_text('byte_budget = "512K"\nping_interval = 10\n')
    cfg = build_server(serve_args("--config", str(conf))).config  # type: ignore[arg-type]
    assert cfg.vmc_byte_budget == 512 << 10 and cfg.ping_interval == 10
    for bad in (["--ping-misses", "0"], ["--byte-budget", "lots"], ["--ping-interval", "-1"]):
        with pytest.raises(SystemExit) as e:
            main(["serve", *bad])
        assert e.value.code == 2


# ---- names (--name, --uuid) ----------------------------------------------------------


def test_name_and_uuid_options_and_config(tmp_path: Path) -> None:
    cfg = build_server(  # type: ignore[arg-type]
        serve_args("--name", "vm one", "--uuid", "6F1E2D3C-4B5A-4978-8695-A4B3C2D1E0F9")
    ).config
    assert cfg.name == "vm one" and cfg.uuid == UUID("6f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9")
    plain = build_server(serve_args()).config  # type: ignore[arg-type]
    assert (plain.name, plain.uuid) == (None, None)
    conf = tmp_path / "names.toml"
    conf.write_text('name = "from-toml"\nuuid = "00000000-0000-0000-0000-0000000000aa"\n')
    cfg = build_server(serve_args("--config", str(conf))).config  # type: ignore[arg-type]
    assert cfg.name == "from-toml" and cfg.uuid == UUID(int=0xAA)
    cfg = build_server(serve_args("--config", str(conf), "--name", "cli")).config  # type: ignore[arg-type]
    assert cfg.name == "cli" and cfg.uuid == UUID(int=0xAA)


def test_invalid_uuid_is_a_one_line_error() -> None:
    one_line_error(serve_process("--uuid", "not-a-uuid"), "--uuid: not a UUID: 'not-a-uuid'")


def test_bad_name_in_config_is_a_one_line_error(tmp_path: Path) -> None:
    conf = tmp_path / "n.toml"
    conf.write_text("name = 5\n")
    one_line_error(serve_process("--config", str(conf)), "name must be text")


# ---- recording (--record) and trivmc replay -------------------------------------------


def test_record_option_names_a_hosted_channel(tmp_path: Path) -> None:
    rec = tmp_path / "a.rec"
    server = build_server(serve_args("--record", f"org.trivmc.echo.0={rec}"))  # type: ignore[arg-type]
    [ch] = server.channels.values()
    assert ch.chardev.recorder is not None and ch.chardev.recorder.label == ch.label
    assert rec.read_bytes().startswith(b"TRIVREC2")
    close_recordings(server)
    assert ch.chardev.recorder is None
    conf = tmp_path / "r.toml"
    conf.write_text(f'usbredir = "null"\nwebdav = "null"\n[record]\n"usbredir:0" = "{rec}"\n')
    server = build_server(serve_args("--config", str(conf)))  # type: ignore[arg-type]
    recording = [ch.label for ch in server.channels.values() if ch.chardev.recorder]
    assert recording == ["usbredir:0"]
    close_recordings(server)


@pytest.mark.parametrize(
    ("record", "why"),
    [
        ("org.nope.0={tmp}/x.rec", "--record: no hosted channel 'org.nope.0' (hosted: port:0"),
        ("webdav={tmp}/x.rec", "no hosted channel 'webdav'"),
        ("org.trivmc.echo.0", "--record: expected CHANNEL=FILE"),
        ("org.trivmc.echo.0={tmp}/no/such/dir/x.rec", "--record: cannot create"),
    ],
    ids=["unknown", "not-hosted", "no-file", "bad-path"],
)
def test_bad_record_option_is_a_one_line_error(tmp_path: Path, record: str, why: str) -> None:
    one_line_error(serve_process("--record", record.format(tmp=tmp_path)), why)


def test_record_twice_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = f"org.trivmc.echo.0={tmp_path}/a.rec", f"port:0={tmp_path}/b.rec"
    assert main(["serve", "--record", a, "--record", b]) == 2
    assert "recorded twice" in capsys.readouterr().err


def replay_process(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trivmc", "replay", *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )


def replay_one_line_error(r: subprocess.CompletedProcess[str], why: str) -> None:
    assert r.returncode == 2, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("trivmc replay: ") and why in lines[0], lines
    assert r.stdout == ""


def good_recording() -> bytes:
    label = b"port:0 (org.t.0)"
    return (
        b"TRIVREC2"
        + struct.pack("<H", len(label))
        + label
        + struct.pack("<BQI", 2, 0, 1)
        + b"\x00"
        + struct.pack("<BQI", 1, 1000, 5)
        + b"hello"
        + struct.pack("<BQI", 0x81, 2000, 5)
        + b"hello"
    )


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "not a trivmc chardev recording"),
        (b"#!/bin/sh\necho hi\n", "not a trivmc chardev recording"),
        (good_recording()[:-3], "record 2 at offset 58: truncated payload (2 of 5 bytes)"),
        (good_recording()[:-10], "record 2 at offset 58: truncated header (8 of 13 bytes)"),
        (good_recording()[:12], "truncated header label"),
    ],
    ids=["empty", "not-a-recording", "cut-payload", "cut-header", "cut-label"],
)
@pytest.mark.parametrize("mode", ["show", "to"])
def test_replay_refuses_bad_files_in_one_line(
    tmp_path: Path, content: bytes, why: str, mode: str
) -> None:
    path = tmp_path / "bad.rec"
    path.write_bytes(content)
    out = tmp_path / "out.bin"
    args = ["--show", str(path)] if mode == "show" else [str(path), "--to", f"file:{out}"]
    replay_one_line_error(replay_process(*args), f"{path}: {why}")
    assert not out.exists()  # nothing delivered (nor created)


def test_replay_missing_file_and_bad_backend(tmp_path: Path) -> None:
    replay_one_line_error(replay_process("--show", str(tmp_path / "none.rec")), "No such file")
    path = tmp_path / "good.rec"
    path.write_bytes(good_recording())
    replay_one_line_error(replay_process(str(path), "--to", "warp:9"), "unknown backend")
    r = replay_process(str(path))
    assert r.returncode == 2 and "one of the arguments --show --to is required" in r.stderr


def test_replay_show_and_to_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "good.rec"
    path.write_bytes(good_recording())
    assert main(["replay", "--show", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "trivmc recording, format version 2, port:0 (org.t.0)"
    assert "0.000001s c->d data        5 B  68 65 6c 6c 6f  |hello|" in out[2]
    assert "0.000002s d->c data        5 B  68 65 6c 6c 6f  |hello|" in out[3]
    target = tmp_path / "sent.bin"
    assert main(["replay", str(path), "--to", f"file:{target}"]) == 0  # (original timing)
    assert target.read_bytes() == b"hello"
    assert "5 bytes and 1 events" in capsys.readouterr().out


async def test_serve_record_then_show_then_replay(tmp_path: Path) -> None:
    """End to end: `trivmc serve --record` with a client echoing through the demo port,
    `trivmc replay --show` of the file, then `trivmc replay --to file:` reproducing
    exactly what the client sent."""
    rec = tmp_path / "echo.rec"
    messages = [b"hello", bytes(range(256)), b"\x00" * 3000 + b"end", b"last"]
    cmd = [sys.executable, "-m", "trivmc", "serve", "--listen", "127.0.0.1:0"]
    cmd += ["--record", f"org.trivmc.echo.0={rec}", "--name", "rec-vm"]
    proc = await trio.lowlevel.open_process(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        with trio.fail_after(30):
            uri = (await LineReader(proc.stdout).readline()).decode().split()[-1]
        async with connect(uri) as session:
            assert session.name == "rec-vm"
            ch = await session.open_port("org.trivmc.echo.0")
            for m in messages:
                await ch.send_all(m)
                got = b""
                with trio.fail_after(10):
                    while len(got) < len(m):
                        got += await ch.receive_some()
                assert got == m
        # the port's CLOSED is recorded before the server logs the connection closed
        log = LineReader(proc.stderr)
        with trio.fail_after(10):
            while b"(org.trivmc.echo.0): closed" not in await log.readline():
                pass
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(10):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    show = await trio.run_process(
        [sys.executable, "-m", "trivmc", "replay", "--show", str(rec)], capture_stdout=True
    )
    lines = show.stdout.decode().splitlines()
    assert lines[0] == "trivmc recording, format version 2, port:0 (org.trivmc.echo.0)"
    assert "c->d event OPENED" in lines[1]
    assert "c->d data        5 B  68 65 6c 6c 6f  |hello|" in show.stdout.decode()
    assert "d->c data      256 B  00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f..." in (
        show.stdout.decode()
    )
    assert "c->d event CLOSED" in lines[-4]
    total = sum(map(len, messages))
    assert lines[-3].startswith("client->device: ")
    assert lines[-3].endswith(f"records, {total} data bytes, 2 events")
    assert lines[-2].startswith("device->client: ")
    assert lines[-2].endswith(f"records, {total} data bytes, 0 events")

    sent = tmp_path / "sent.bin"
    fast = ["--to", f"file:{sent}", "--timing", "fast"]
    replay = await trio.run_process(
        [sys.executable, "-m", "trivmc", "replay", str(rec), *fast], capture_stdout=True
    )
    assert sent.read_bytes() == b"".join(messages)
    assert f"{total} bytes and 2 events to file:{sent}" in replay.stdout.decode()


def test_metrics_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert serve_args("--metrics", "127.0.0.1:9930").metrics == "127.0.0.1:9930"  # type: ignore[attr-defined]
    conf = tmp_path / "metrics.toml"
    conf.write_text('metrics = "127.0.0.1:9931"\n')
    assert serve_args("--config", str(conf)).metrics == "127.0.0.1:9931"  # type: ignore[attr-defined]
    assert serve_args().metrics is None  # type: ignore[attr-defined]
    assert main(["serve", "--metrics", "nowhere"]) == 2
    assert "expected HOST:PORT" in capsys.readouterr().err


def test_metrics_address_in_use_exits_2() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = serve_process("--listen", "127.0.0.1:0", "--metrics", f"127.0.0.1:{port}")
    one_line_error(r, f"cannot listen on 127.0.0.1:{port}: Address already in use")
