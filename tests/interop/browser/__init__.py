"""The spice-html5 page and its selenium harness (see harness.py)."""
