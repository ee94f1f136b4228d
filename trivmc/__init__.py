"""trivmc: the SPICE spicevmc path (usbredir, port, webdav channels) on trio."""

__version__ = "0.1.0"
