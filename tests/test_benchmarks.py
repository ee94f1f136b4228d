"""The benchmark harness's own parts work (not how fast: that is `nox -s bench`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from benchmarks import pump
from benchmarks.__main__ import command_line, run_order
from benchmarks.procs import (
    HERE,
    CpuSnapshot,
    children,
    cpu_seconds,
    cpu_snapshot,
    cpu_used,
    free_port,
    proc_stat_cpu_seconds,
    run_json,
    server,
    wait_idle,
)
from benchmarks.report import (
    CPU,
    DASH,
    KEYS_CPU,
    Result,
    combine,
    cpu_per_gb,
    pair_ratios,
    quartiles,
    render,
)
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


async def test_sessions_client_echoes_through_trivmc_ports_and_counts_every_byte() -> None:
    srv = Server(ServerConfig(listen=[("127.0.0.1", 0)], multi_session=True, key_pool_size=2))
    for p in range(3):
        srv.add_port(f"org.trivmc.bench.0.{p}", EchoBackend())
    async with srv as addresses:
        port = addresses[0][1]  # type: ignore[index]
        cmd = [sys.executable, str(HERE / "sessions_client.py"), "spice", "--port", str(port)]
        cmd += ["--sessions", "3", "--per-server", "3", "--bytes", "65536", "--rounds", "2"]
        with trio.fail_after(60):
            done = await trio.run_process(cmd, stdin=b"\n", capture_stdout=True)
    lines = done.stdout.decode().splitlines()
    assert lines[0].startswith("CONNECTED 3 ")
    res = json.loads(lines[-1])
    assert res["sessions"] == 3 and len(res["MBps"]) == 2 and min(res["MBps"]) > 0
    assert srv.links_refused == 0


def test_sessions_client_raw_mode_against_the_many_connections_pump() -> None:
    port = free_port()
    cmd = [sys.executable, str(HERE / "pump.py"), "serve", "echo", "--port", str(port), "--many"]
    client = [sys.executable, str(HERE / "sessions_client.py"), "raw", "--port", str(port)]
    client += ["--sessions", "20", "--bytes", "16384", "--rounds", "2"]
    with server(cmd, port):
        done = subprocess.run(client, input=b"\n", capture_output=True, timeout=60, check=True)
    lines = done.stdout.decode().splitlines()
    assert lines[0].startswith("CONNECTED 20 ")
    assert len(json.loads(lines[-1])["MBps"]) == 2


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
    row = (
        "| send | 90.0 msg/s (n=5) | 100 msg/s (n=5) | 200 msg/s (n=5)"
        f" | 0.90 (IQR 0.90{DASH}0.90) |  | ≥ 1 | **no** |"
    )
    assert row in table
    assert "| echo | 110 µs (n=1) | 100 µs (n=1) | — | 1.10 |  | ≤ 1.2 | yes |" in table
    assert "n/a: one device" in table and "≤ 64.0 KiB" in table


def test_ratio_is_the_median_of_the_pairs_with_their_interquartile_range() -> None:
    r = Result("s", "send", "MB/s", True, metric="MBps")
    # the host slows both servers of a pair alike: the pairs agree, the medians less so
    for t, c in ((60, 100), (160, 200), (90, 100), (40, 50), (70, 100)):
        r.add("trivmc", {"MBps": t})
        r.add("spice-server", {"MBps": c})
    assert r.ratios() == [0.6, 0.8, 0.9, 0.8, 0.7]
    assert r.ratio == 0.8  # the median pair; the medians' ratio is 70 / 100
    assert r.spread() == ("IQR", 0.7, 0.8)  # of 5 sorted ratios: the 2nd and the 4th
    assert r.ratio_text() == f"0.80 (IQR 0.70{DASH}0.80)"
    # too few pairs for a spread: the ratio alone
    one = Result("h", "halfopen", "MiB", False, metric="growth")
    one.add("trivmc", {"growth": 3.0})
    one.add("spice-server", {"growth": 2.0})
    assert one.ratio_text() == "1.50" and one.spread() is None


def test_quartiles_and_pairs() -> None:
    assert quartiles([3.0]) == (3.0, 3.0, 3.0)
    assert quartiles([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]) == (2.5, 4.0, 5.5)
    assert quartiles([4.0, 1.0, 3.0, 2.0]) == (1.75, 2.5, 3.25)
    assert pair_ratios([1.0, 3.0], [2.0, 4.0]) == [0.5, 0.75]
    with pytest.raises(ValueError):
        pair_ratios([1.0, 2.0], [1.0])
    r = Result("x", "x", "ms", False, metric="median_ms")
    r.add("trivmc", {"median_ms": 2.0})
    r.add("trivmc", {"median_ms": 4.0})
    r.add("spice-server", {"median_ms": 10.0})  # a run missing: the medians' ratio
    assert r.ratios() == [0.3] and r.ratio == 0.3


def test_runs_pair_trivmc_and_spice_server_back_to_back() -> None:
    names = ["trivmc", "spice-server", "pump"]
    orders = [run_order(run, names) for run in range(8)]
    for order in orders:
        assert sorted(order) == sorted(names)
        assert abs(order.index("trivmc") - order.index("spice-server")) == 1
    firsts = [min(o, key=lambda n: o.index(n) if n != "pump" else 9) for o in orders]
    assert firsts == ["trivmc", "spice-server"] * 4  # each first in every other run
    assert [o[0] == "pump" for o in orders] == [False, False, True, True] * 2
    assert run_order(1, ["trivmc", "pump"]) == ["trivmc", "pump"]  # no anchor


def test_server_cpu_per_gb_from_snapshots() -> None:
    before = CpuSnapshot(10.0, {101: 1.0, 102: 2.0})
    after = CpuSnapshot(10.6, {101: 1.25, 103: 0.5})  # 102 died, 103 was started
    own, kids = cpu_used(before, after)
    assert own == pytest.approx(0.6) and kids == pytest.approx(0.75)
    # 0.6 s for 500 MB, of which 0.1 s was the session's link: 1.0 s per GB
    assert cpu_per_gb(own, 500_000_000, session=0.1) == pytest.approx(1.0)
    assert cpu_per_gb(0.25, 1 << 30) == pytest.approx(0.25 / 1.073741824)


def test_proc_stat_cpu_reading() -> None:
    # the command name may hold spaces and parentheses; utime and stime are fields 14, 15
    line = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 3 0 9\n"
    assert proc_stat_cpu_seconds(line, 100) == pytest.approx(2.87)


def test_children_and_cpu_of_live_processes() -> None:
    with subprocess.Popen(["sleep", "30"]) as child:
        try:
            assert child.pid in children(os.getpid())
            ticks = os.sysconf("SC_CLK_TCK")
            stat = Path(f"/proc/{os.getpid()}/stat")
            low = proc_stat_cpu_seconds(stat.read_text(), ticks)
            clock = cpu_seconds(os.getpid())
            high = proc_stat_cpu_seconds(stat.read_text(), ticks)
            assert low - 0.02 <= clock <= high + 2 / ticks  # the same time, finer
            snap = cpu_snapshot(os.getpid(), with_children=True)
            assert child.pid in snap.children and snap.server > 0
            wait_idle(child.pid, quiet=0.05)  # a sleeping process is done starting
        finally:
            child.kill()


def _table(ratio_of: float, t_value: float, keys: list[str]) -> list[Result]:
    out = []
    for key in keys:
        r = Result(key, f"row {key}", "MB/s", True, target=1.0, metric="MBps")
        for i in range(5):
            r.add("trivmc", {"MBps": t_value + i})
            r.add("spice-server", {"MBps": (t_value + i) / ratio_of})
            r.add_value("trivmc", CPU, 0.5 + i / 10)
            r.add_value("trivmc", KEYS_CPU, 0.0)
            r.add_value("spice-server", CPU, 0.3)
        r.text["pump"] = "n/a"
        out.append(r)
    return out


def test_repeat_takes_the_median_of_the_tables_medians_and_their_range() -> None:
    tables = [
        _table(0.7, 100.0, ["a", "b"]),
        _table(0.9, 300.0, ["a"]),  # row b missing from this table
        _table(0.8, 200.0, ["a", "b"]),
    ]
    a, b = combine(tables)
    assert a.tables == 3 and a.values("trivmc") == [102.0, 302.0, 202.0]
    assert a.median("trivmc") == 202.0 and a.median("trivmc", CPU) == pytest.approx(0.7)
    assert a.table_ratios == pytest.approx([0.7, 0.9, 0.8])
    assert a.ratio == pytest.approx(0.8) and a.spread() == ("range", 0.7, pytest.approx(0.9))
    assert a.ratio_text() == f"0.80 (range 0.70{DASH}0.90)"
    assert a.cell("trivmc") == f"202 MB/s (102{DASH}302) (n=5, 3 tables)"
    assert a.cpu_cell() == "0.70 + 0.00 · 0.30 · —"
    assert b.table_ratios[1] is None and b.ratio == pytest.approx(0.75)
    text = render([a, b], ["- machine"], "nox -s bench -- --repeat 3")
    assert "the whole table was run 3 times" in text
    assert "| row a | 0.70 | 0.90 | 0.80 |" in text and "| row b | 0.70 | — | 0.80 |" in text
    assert f"| 0.80 (range 0.70{DASH}0.90) | 0.70 + 0.00 · 0.30 · — | ≥ 1 | **no** |" in text


def test_command_line_of_the_heading() -> None:
    assert command_line(False, 1, 7, []) == "nox -s bench"
    assert command_line(True, 3, 5, ["send_64k"]) == "nox -s bench -- --quick --repeat 3 send_64k"
    assert command_line(False, 1, 9, []) == "nox -s bench -- --runs 9"


def test_report_takes_the_extra_metrics_a_client_reports() -> None:
    links = Result("l", "links", "ms", False, metric="median_ms", also=["last50_median_ms"])
    links.add("trivmc", {"median_ms": 2.0, "last50_median_ms": 3.0})
    links.add("pump", {"median_ms": 0.5})  # the pump has no last-50 figure
    assert links.median("trivmc", "last50_median_ms") == 3.0
    assert links.cell("pump") == "0.50 ms (n=1)"
    assert links.cell("trivmc") == "2.00 ms · 3.00 ms last 50 (n=1)"


def test_pump_pattern_is_the_anchor_source_pattern() -> None:
    assert pump.PATTERN[:502] == bytes(i % 251 for i in range(502))
