"""An idle server loads only what its configuration uses: cryptography at the first
link, wsproto at the first WebSocket, prometheus_client with --metrics (docs/limits.md,
idle memory). Checked in a fresh interpreter, since this one has loaded everything."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("cryptography", "wsproto", "prometheus_client", "hypothesis", "pytest")


def test_the_serve_command_imports_none_of_the_heavy_packages() -> None:
    code = (
        "import sys, trivmc, trivmc.cli.serve, trivmc.server, trivmc.client;"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_heavy_packages_still_come_when_used() -> None:
    code = (
        "import sys; from trivmc.protocol import generate_key;"
        "from trivmc.transport import WebSocketStream;"
        "generate_key();"
        "print(all(m in sys.modules for m in ('cryptography', 'wsproto')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
