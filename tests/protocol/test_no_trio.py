"""trivmc.protocol is sans-IO: importing it never imports trio."""

from __future__ import annotations

import subprocess
import sys


def test_protocol_does_not_import_trio() -> None:
    code = "import sys, trivmc.protocol; sys.exit('trio' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
