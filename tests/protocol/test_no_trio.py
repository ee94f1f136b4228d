"""trivmc.protocol is sans-IO: importing it never imports trio."""

from __future__ import annotations

import subprocess
import sys


def test_protocol_does_not_import_trio() -> None:
    code = "import sys, trivmc.protocol; sys.exit('trio' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_the_qmp_wire_layer_imports_no_trio() -> None:
    """trivmc/control/wire.py is sans-IO too (its package's listener is not)."""
    import ast
    from pathlib import Path

    import trivmc.control.wire as wire

    imported: set[str] = set()
    for node in ast.walk(ast.parse(Path(wire.__file__).read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            imported.add(node.module.split(".")[0])
    assert "json" in imported and "trio" not in imported
