"""Tickets that rotate, with real spice-gtk: the ticket comes from --password-file, a new
one is set through the control socket (QEMU's set_password) and spice-gtk links with
it; after expire_password now, spice-gtk is refused."""

from __future__ import annotations

from pathlib import Path

from trivmc.control.client import control_client

from .tools import run_gtk, trivmc_serve

ECHO = "org.trivmc.echo.0"


async def test_spice_gtk_with_a_ticket_set_then_expired_through_the_control_socket(
    tmp_path: Path,
) -> None:
    secret = tmp_path / "ticket"
    secret.write_text("from-the-file\n")
    control = tmp_path / "control.sock"
    args = (
        "--password-file",
        str(secret),
        "--control",
        f"unix:{control}",
        "--port",
        f"{ECHO}=echo",
    )
    async with trivmc_serve(*args) as uri, control_client(str(control)) as ctl:
        first = await run_gtk("auth", uri, password="from-the-file")
        assert first["outcome"] == "opened", first
        await ctl.execute("set_password", {"protocol": "spice", "password": "rotated"})
        old = await run_gtk("auth", uri, password="from-the-file")
        new = await run_gtk("auth", uri, password="rotated")
        await ctl.execute("expire_password", {"protocol": "spice", "time": "now"})
        expired = await run_gtk("auth", uri, password="rotated")
        await ctl.execute("query-spice")  # every event emitted before it comes first
        linked = [
            e["data"]["client"]["channel-type"]
            for e in ctl.events
            if e["event"] == "SPICE_INITIALIZED"
        ]
    assert old["outcome"] == "error-auth", old
    assert new["outcome"] == "opened", new
    assert expired["outcome"] == "error-auth", expired
    assert linked.count(1) == 2  # the main links with the right ticket: first and new
