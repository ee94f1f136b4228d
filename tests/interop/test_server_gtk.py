"""spice-gtk (the real client) against `trivmc serve` (the real command)."""

from __future__ import annotations

from pathlib import Path
from uuid import UUID

from .tools import run_gtk, trivmc_serve

ECHO = "org.trivmc.echo.0"
EIGHT_MIB = 8 * 1024 * 1024


async def test_port_echo_8mib() -> None:
    async with trivmc_serve("--disable-ticketing", "--port", f"{ECHO}=echo") as uri:
        r = await run_gtk("port-echo", uri, ECHO, str(EIGHT_MIB))
    assert r.get("timeout") is None, r
    assert r["port_name"] == ECHO
    assert r["opened_history"][0] is True
    assert r["recv_sha256"] == r["sent_sha256"]
    print(f"spice-gtk echo through trivmc: {2 * EIGHT_MIB / r['seconds'] / 1e6:.1f} MB/s")


async def test_usbredir_links_and_lz4_negotiated() -> None:
    log: list[str] = []
    async with trivmc_serve("--disable-ticketing", "--usbredir", "null", log=log) as uri:
        r = await run_gtk("usbredir", uri)
    assert r["events"][0] == "opened", r
    assert r["channel_id"] == 0
    assert r["server_lz4"] is True  # the server's cap, as spice-gtk sees it
    assert any("usbredir:0: linked (client lz4: yes)" in line for line in log), log  # the client's


async def test_wrong_password_refused_right_one_works() -> None:
    async with trivmc_serve("--password", "s3cret", "--port", f"{ECHO}=echo") as uri:
        bad = await run_gtk("auth", uri, password="wrong")
        good = await run_gtk("auth", uri, password="s3cret")
        echo = await run_gtk("port-echo", uri, ECHO, "4096", password="s3cret")
    assert bad["outcome"] == "error-auth", bad
    assert good["outcome"] == "opened", good
    assert echo["recv_sha256"] == echo["sent_sha256"]


async def test_second_client_on_port_refused_first_keeps_echoing() -> None:
    async with trivmc_serve("--disable-ticketing", "--port", f"{ECHO}=echo") as uri:
        r = await run_gtk("port-echo2", uri, ECHO, str(256 * 1024))
    assert r["recv_sha256"] == r["sent_sha256"]
    # the newcomer links (result OK) and is closed at once, as with spice-server
    assert r["second_events"][-1] == "closed", r
    assert r["recv2_sha256"] == r["sent_sha256"], "the first client stopped echoing"


async def test_port_echo_over_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "spice.sock"
    async with trivmc_serve("--unix", str(path), "--port", f"{ECHO}=echo") as uri:
        assert uri == f"spice+unix://{path}"
        r = await run_gtk("port-echo", f"spice+unix://{path}", ECHO, str(1024 * 1024))
    assert r["recv_sha256"] == r["sent_sha256"]


async def test_spice_gtk_reads_the_name_and_uuid() -> None:
    vm_uuid = "6f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
    name = "trivmc vm ü"
    async with trivmc_serve("--disable-ticketing", "--name", name, "--uuid", vm_uuid) as uri:
        named = await run_gtk("names", uri)
    async with trivmc_serve("--disable-ticketing") as uri:
        bare = await run_gtk("names", uri)
    assert named.get("timeout") is None, named
    assert (named["name"], named["uuid"]) == (name, vm_uuid)
    assert "name" in named["notified"]  # set by MAIN_NAME
    # without --name/--uuid nothing is sent: the session keeps its defaults
    assert (bare["name"], bare["uuid"]) == (None, str(UUID(int=0)))
    assert "name" not in bare["notified"]
