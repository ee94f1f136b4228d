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
