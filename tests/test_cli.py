"""The `trivmc serve` command line: defaults, --config merging, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from trivmc.cli import build_parser, main
from trivmc.cli.serve import build_server, merge_config, stats_lines


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
