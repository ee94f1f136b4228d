"""Runs the code examples in README.md and docs/**/*.md (docs/guides/00-about-examples.md).

A page is one session: a fresh temporary directory (with the checkout's `examples/`
and `tests/` linked in), its code blocks run in order, every process a block starts
stopped when the page ends.
"""
