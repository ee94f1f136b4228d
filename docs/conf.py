"""Sphinx configuration of trivmc's documentation: `nox -s docs` builds it into
docs/_build/html with warnings as errors."""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

from sphinx.application import Sphinx

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE / "_ext"))

project = "trivmc"
author = "the trivmc authors"
copyright = "2026, the trivmc authors"
# the installed trivmc's version: the one `trivmc --version` prints
release = importlib.metadata.version("trivmc")
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.graphviz",
    "trio_inventory",
    "reexported_data",
    "backtick_names",
    "signature_defaults",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store"]

myst_enable_extensions = ["colon_fence", "substitution"]
myst_heading_anchors = 3
myst_substitutions = {"release": release}

# docstrings are reStructuredText; a name in single backticks is a cross reference
default_role = "py:obj"
autodoc_default_options = {
    "members": True,
    "undoc-members": True,
    "show-inheritance": True,
}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autoclass_content = "both"

# No network at build time: Python's inventory comes from Debian's python3.11-doc
# package, trio's is generated from the installed trio by _ext/trio_inventory.py.
PYTHON_INVENTORY = "/usr/share/doc/python3.11/html/objects.inv"
trio_inventory_path = "_build/inventories/trio.inv"
intersphinx_mapping = {
    "trio": ("https://trio.readthedocs.io/en/stable/", trio_inventory_path),
}
if Path(PYTHON_INVENTORY).exists():
    intersphinx_mapping["python"] = ("https://docs.python.org/3/", PYTHON_INVENTORY)

# Every cross reference must resolve (with -W, an unresolved one fails the build).
# Besides these lists, _ext/backtick_names.py links a capitalised name to the one
# object whose full name ends with it, and quiets a name that is local to the
# docstring's object (a parameter, field, attribute, submodule).
nitpicky = True
nitpick_ignore_regex = [
    # code in single backticks, not a name: calls, `host:port`, `ws://`, `a=b`, file names
    ("py:obj", r".*[^\w.].*"),
    ("py:obj", r"[\w.]+\.py"),
]
nitpick_ignore = [
    # classes of trivmc's internal modules in public signatures and bases: not in a
    # package's __all__, so not documented (making them public is a change in trivmc/)
    ("py:class", "trivmc.backends.connecting.ConnectingBackend"),
    ("py:class", "trivmc.backends.handover.PeerHandover"),
    ("py:class", "trivmc.backends.listening.ListeningBackend"),
    ("py:class", "trivmc.backends.simple._Base"),
    ("py:class", "trivmc.client.connection.MessageConnection"),
    ("py:class", "trivmc.protocol.message_base.FixedLayout"),
    ("py:class", "trivmc.server.channel.Traffic"),
    ("py:class", "trivmc.server.vmc_migration.MigratingClient"),
    # internal names a docstring mentions: not documented, for the same reason
    ("py:obj", "ChannelRegistry.add_usbredir"),
    ("py:obj", "ChannelRegistry.find"),
    ("py:obj", "OUTSTANDING_PINGS"),
    ("py:obj", "PeerNotReading"),
    ("py:obj", "PeerUnresponsive"),
    ("py:obj", "begin_migration"),
    ("py:obj", "inherited_control_address"),
    ("py:obj", "migration_main.migrate_sessions"),
    ("py:obj", "start_migration"),
    ("py:obj", "trivmc.server.keypool.KeyPool"),
    # wire and protocol words, not Python names: QMP's `return`, error `cls` and `to`
    # argument, the WebSocket subprotocol `binary`, spice-server's `st`, message fields
    ("py:obj", "binary"),
    ("py:obj", "cls"),
    ("py:obj", "connected"),
    ("py:obj", "error"),
    ("py:obj", "return"),
    ("py:obj", "st"),
    ("py:obj", "to"),
    ("py:obj", "write_size"),
    # third-party packages without an inventory here (no network at build time)
    ("py:class", "rsa.RSAPrivateKey"),  # cryptography.hazmat.primitives.asymmetric.rsa
    ("py:class", "wsproto.WSConnection"),
    ("py:obj", "wsproto"),
]

graphviz_output_format = "svg"

html_theme = "furo"
html_title = f"trivmc {release}"


GUIDES_TOCTREE = "```{toctree}\n:caption: Guides\n:glob:\n:maxdepth: 1\n\nguides/*\n```\n"


def drop_empty_guides(app: Sphinx, docname: str, source: list[str]) -> None:
    """index.md lists docs/guides/*.md with a glob; while there is none (they come from
    their own branch), the toctree is left out, since a glob matching nothing warns."""
    if docname == "index" and not any((HERE / "guides").glob("*.md")):
        assert GUIDES_TOCTREE in source[0], "index.md's guides toctree changed"
        source[0] = source[0].replace(GUIDES_TOCTREE, "")


def setup(app: Sphinx) -> None:
    app.connect("source-read", drop_empty_guides)
