"""The benchmark harness's own parts work (not how fast: that is `nox -s bench`)."""

from __future__ import annotations

import json
import sys

import trio

from benchmarks import pump
from benchmarks.procs import HERE, free_port, run_json, server
from benchmarks.report import Result, render
from trivmc.backends import EchoBackend
from trivmc.server import Server, ServerConfig


def test_pump_sink_echo_and_source_move_every_byte() -> None:
    for device, args, check in (
        ("sink", ["send", "--msg-size", "4096", "--total", "1048576"], "msgs_per_s"),
        ("echo", ["echo", "--msg-size", "64", "--count", "20"], "median_us"),
        ("source", ["recv", "--total", "1048576"], "MBps"),
        ("echo", ["link", "--count", "3"], "median_ms"),
    ):
        port = free_port()
        cmd = [sys.executable, str(HERE / "pump.py"), "serve", device, "--port", str(port)]
        with server([*cmd, "--total", "1048576"], port):
            res = run_json([sys.executable, str(HERE / "pump.py"), *args, "--port", str(port)])
        value = res[check]
        assert isinstance(value, int | float) and value > 0, (device, res)
        if device != "echo":
            assert res["total"] == 1048576  # the sink's record came after every byte


async def test_lean_link_client_links_main_and_port_against_trivmc() -> None:
    srv = Server(ServerConfig(listen=[("127.0.0.1", 0)], key_pool_size=2))
    srv.add_port("org.trivmc.bench.0", EchoBackend())
    async with srv as addresses:
        port = addresses[0][1]  # type: ignore[index]
        cmd = [sys.executable, str(HERE / "link_client.py"), "--port", str(port), "--count", "3"]
        with trio.fail_after(60):
            done = await trio.run_process(cmd, capture_stdout=True)
    res = json.loads(done.stdout.decode().splitlines()[-1])
    assert res["count"] == 3 and res["median_ms"] > 0
    assert srv.links_refused == 0


async def test_lean_link_client_passes_a_password_and_reports_the_last_50() -> None:
    srv = Server(ServerConfig(listen=[("127.0.0.1", 0)], key_pool_size=2, password="pw"))
    srv.add_port("org.trivmc.bench.0", EchoBackend())
    async with srv as addresses:
        port = addresses[0][1]  # type: ignore[index]
        cmd = [sys.executable, str(HERE / "link_client.py"), "--port", str(port)]
        with trio.fail_after(60):
            done = await trio.run_process(
                [*cmd, "--count", "3", "--password", "pw"], capture_stdout=True
            )
            refused = await trio.run_process(
                [*cmd, "--count", "1"], check=False, capture_stderr=True
            )
    res = json.loads(done.stdout.decode().splitlines()[-1])
    assert res["count"] == 3 and res["last50_median_ms"] > 0 and res["last50_per_s"] > 0
    assert refused.returncode != 0 and b"PERMISSION_DENIED" in refused.stderr
    assert srv.links_refused == 1


def test_password_rows_give_both_spice_servers_the_ticket() -> None:
    from benchmarks.rows import BENCH_PASSWORD, ROWS, anchor_cmd, trivmc_cmd

    rows = {row.key: row for row in ROWS}
    pw = rows["links200_pw"]
    assert pw.password == BENCH_PASSWORD and pw.spice[-2:] == ["--password", BENCH_PASSWORD]
    assert (
        rows["links200_pw_lean"].password == BENCH_PASSWORD and rows["links200"].password is None
    )
    assert anchor_cmd("a", 1, "echo", 0, BENCH_PASSWORD)[-2:] == ["-t", BENCH_PASSWORD]
    assert "-t" not in anchor_cmd("a", 1, "echo", 0)
    cmd = trivmc_cmd(1, "echo", 0, BENCH_PASSWORD)
    assert cmd[cmd.index("--password") + 1] == BENCH_PASSWORD and "--disable-ticketing" not in cmd
    assert "--disable-ticketing" in trivmc_cmd(1, "echo", 0)


def test_report_ratio_targets_and_text_cells() -> None:
    send = Result("s", "send", "msg/s", True, target=1.0, metric="msgs_per_s")
    for who, v in (("trivmc", 90.0), ("spice-server", 100.0), ("pump", 200.0)):
        for _ in range(5):
            send.add(who, {"msgs_per_s": v})
    echo = Result("e", "echo", "µs", False, target=1.2, metric="median_us")
    echo.add("trivmc", {"median_us": 110.0})
    echo.add("spice-server", {"median_us": 100.0})
    per = Result("r", "rss", "KiB", False, limit=64, metric="kib")
    per.add("trivmc", {"kib": 70.0})
    per.text["spice-server"] = "n/a: one device"
    assert send.ratio == 0.9 and send.met is False
    assert echo.met is True and per.met is False
    table = render([send, echo, per], ["- machine"], "nox -s bench")
    row = "| send | 90.0 msg/s (n=5) | 100 msg/s (n=5) | 200 msg/s (n=5) | 0.90 | ≥ 1 | **no** |"
    assert row in table
    assert "n/a: one device" in table and "≤ 64.0 KiB" in table


def test_report_takes_the_extra_metrics_a_client_reports() -> None:
    links = Result("l", "links", "ms", False, metric="median_ms", also=["last50_median_ms"])
    links.add("trivmc", {"median_ms": 2.0, "last50_median_ms": 3.0})
    links.add("pump", {"median_ms": 0.5})  # the pump has no last-50 figure
    assert links.median("trivmc", "last50_median_ms") == 3.0
    assert links.cell("pump") == "0.50 ms (n=1)"
    assert links.cell("trivmc") == "2.00 ms · 3.00 ms last 50 (n=1)"


def test_pump_pattern_is_the_anchor_source_pattern() -> None:
    assert pump.PATTERN[:502] == bytes(i % 251 for i in range(502))
