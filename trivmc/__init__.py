"""trivmc: the SPICE spicevmc path (usbredir, port, webdav channels) on trio."""

__all__ = ["__version__"]

#: The package version (pyproject.toml's; `trivmc --version` reads the installed one).
__version__ = "0.1.0"
