"""spice-html5 (Debian's JS client) in headless chromium against `trivmc serve`, over
WebSocket on the ordinary SPICE port.

The page (browser/port_test.js) links spice-html5's main channel to ws://127.0.0.1:PORT;
spice-html5 then links every channel in the list, ports included. (1) a `source:N` port:
PORT_INIT names it and N bytes of the pattern i mod 251 arrive, checked in the page;
(2) an `echo` port: the page sends SPICEVMC_DATA messages and checks what comes back.
The Python side reads the page's result (window.trivmcResult) with a bounded wait.
"""

from __future__ import annotations

import functools

import trio

from .browser.harness import (
    PageRun,
    page_server,
    page_url,
    require_browser,
    run_port_page,
    ws_uri_for,
)
from .tools import trivmc_serve

SRC = "org.trivmc.src"
ECHO = "org.trivmc.echo"
ONE_MIB = 1024 * 1024
ECHO_BYTES = 256 * 1024
CHUNK = 4096
PAGE_TIMEOUT = 60.0


async def _run_page(log: list[str], **params: str | int) -> PageRun:
    """Serve trivmc with both ports, open the page with `params`, return its run."""
    require_browser()
    async with trivmc_serve(
        "--disable-ticketing",
        "--port",
        f"{SRC}=source:{ONE_MIB}",
        "--port",
        f"{ECHO}=echo",
        log=log,
    ) as uri:
        with page_server() as base:
            url = page_url(base, ws_uri_for(uri), **params)
            # chromium start-up, page load (30 s) and the wait (PAGE_TIMEOUT) are each
            # bounded inside run_port_page; the thread cannot be abandoned mid-call.
            run = await trio.to_thread.run_sync(
                functools.partial(run_port_page, url, timeout=PAGE_TIMEOUT)
            )
    print(f"page: {run.seconds:.2f} s, result {run.result}")
    return run


def _explain(run: PageRun, log: list[str]) -> str:
    return run.describe() + "\nserver log:\n" + "".join(log[-60:])


async def test_spice_html5_receives_source_port_1mib() -> None:
    log: list[str] = []
    run = await _run_page(log, src=SRC, n=ONE_MIB)
    why = _explain(run, log)
    assert not run.timed_out, why
    r = run.result
    assert r is not None and r["done"], why
    assert r["errors"] == [], why
    src = r["src"]
    assert src["init"] is True, why  # PORT_INIT named the port
    assert src["mismatch"] is None, why
    assert src["received"] == ONE_MIB, why
    assert src["complete"] is True and r["ok"] is True, why
    names = [p["name"] for p in r["port_inits"]]
    assert SRC in names and len(names) == len(set(names)), why  # each port named once
    print(f"spice-html5 received {ONE_MIB} bytes from trivmc's source port in {src['ms']} ms")


async def test_spice_html5_echo_port_256kib() -> None:
    log: list[str] = []
    run = await _run_page(log, echo=ECHO, echo_bytes=ECHO_BYTES, chunk=CHUNK)
    why = _explain(run, log)
    assert not run.timed_out, why
    r = run.result
    assert r is not None and r["done"], why
    assert r["errors"] == [], why
    echo = r["echo"]
    assert echo["init"] is True, why
    assert echo["sent"] == ECHO_BYTES, why
    assert echo["messages_sent"] == ECHO_BYTES // CHUNK, why
    assert echo["mismatch"] is None, why
    assert echo["received"] == ECHO_BYTES, why
    assert echo["complete"] is True and r["ok"] is True, why
    print(
        f"spice-html5 echoed {ECHO_BYTES} bytes through trivmc in "
        f"{echo['ms'] - echo['first_send_ms']} ms"
    )
