"""Debian's spice-html5 in Debian's headless chromium, driven by selenium.

`page_server()` serves this folder's page and /usr/share/spice-html5 (as /spice-html5/)
on 127.0.0.1; `run_port_page()` opens the page in a fresh chromium and waits, bounded,
for the page's result. Everything here is blocking: from trio, call it through
`trio.to_thread.run_sync`. Nothing reaches beyond the loopback: selenium is given the
chromedriver and the chromium binary, so selenium-manager is never asked for one.
"""

from __future__ import annotations

import contextlib
import http.server
import importlib.util
import os
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..tools import missing

HERE = Path(__file__).resolve().parent
SPICE_HTML5 = Path("/usr/share/spice-html5")
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PAGE = "port_test.html"

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def require_browser() -> None:
    """Skip (or fail under TRIVMC_REQUIRE_INTEROP) when a piece is missing."""
    if not (SPICE_HTML5 / "main.js").is_file():
        missing("spice-html5 (Debian spice-html5, /usr/share/spice-html5)")
    if not os.access(CHROMIUM, os.X_OK):
        missing(f"chromium ({CHROMIUM}, Debian chromium)")
    if not os.access(CHROMEDRIVER, os.X_OK):
        missing(f"chromedriver ({CHROMEDRIVER}, Debian chromium-driver)")
    if importlib.util.find_spec("selenium") is None:
        missing("selenium (PyPI, in the test extra)")


class _Handler(http.server.SimpleHTTPRequestHandler):
    """This folder at /, spice-html5 at /spice-html5/; no directory listings needed."""

    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".js": "text/javascript",
        ".html": "text/html",
        ".css": "text/css",
    }

    def translate_path(self, path: str) -> str:
        path = urllib.parse.urlsplit(path).path
        parts = [p for p in urllib.parse.unquote(path).split("/") if p not in ("", ".", "..")]
        if parts and parts[0] == "spice-html5":
            return str(SPICE_HTML5.joinpath(*parts[1:]))
        return str(HERE.joinpath(*parts))

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def page_server() -> Iterator[str]:
    """Serve the page on 127.0.0.1 (kernel-chosen port) in a thread; yield its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="page-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def page_url(base: str, ws_uri: str, **params: str | int) -> str:
    """The page's URL: ws= the server's WebSocket URI, then the scenario's parameters."""
    query = urllib.parse.urlencode({"ws": ws_uri, **{k: str(v) for k, v in params.items()}})
    return f"{base}{PAGE}?{query}"


def ws_uri_for(spice_uri: str) -> str:
    """spice://HOST:PORT -> ws://HOST:PORT (a SPICE server answers both on one port)."""
    split = urllib.parse.urlsplit(spice_uri)
    assert split.scheme == "spice" and split.port, spice_uri
    return f"ws://{split.hostname}:{split.port}"


@dataclass
class PageRun:
    result: dict[str, Any] | None  # window.trivmcResult as last read
    timed_out: bool
    seconds: float  # from page load to done (or to the time-out)
    console: list[str] = field(default_factory=list)  # chromium's console, as logged

    def describe(self) -> str:
        lines = [f"timed_out={self.timed_out} seconds={self.seconds:.2f}"]
        lines.append(f"result={self.result}")
        lines.append("browser console:")
        lines += ["  " + ln for ln in self.console[-60:]]
        return "\n".join(lines)


_READ_RESULT = "return window.trivmcResult === undefined ? null : window.trivmcResult;"


def run_port_page(url: str, timeout: float = 60.0) -> PageRun:
    """Open `url` in a fresh headless chromium; wait (at most `timeout` s) for the page's
    result to be done; return it with chromium's console log. Chromium is always quit."""
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    with tempfile.TemporaryDirectory(prefix="trivmc-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        service = Service(
            executable_path=CHROMEDRIVER, log_output=os.path.join(profile, "chromedriver.log")
        )
        driver = webdriver.Chrome(options=options, service=service)
        try:
            driver.set_page_load_timeout(30)
            driver.set_script_timeout(10)
            start = time.monotonic()
            driver.get(url)

            def done(d: Any) -> dict[str, Any] | None:
                r = d.execute_script(_READ_RESULT)
                return r if isinstance(r, dict) and r.get("done") else None

            timed_out = False
            result: dict[str, Any] | None
            try:
                result = WebDriverWait(driver, timeout, poll_frequency=0.1).until(done)
            except TimeoutException:
                timed_out = True
                result = driver.execute_script(_READ_RESULT)
            seconds = time.monotonic() - start
            entries: list[dict[str, Any]] = driver.get_log("browser")  # type: ignore[no-untyped-call]
            console = [f"{e.get('level')} {e.get('message')}" for e in entries]
            return PageRun(result, timed_out, seconds, console)
        finally:
            driver.quit()
