"""Every code example in README.md and docs/**/*.md runs (docs/guides/00-about-examples.md).

One test per page: its ```python and ```sh blocks run in order in a fresh directory,
on loopback, each within 60 s, and every process they start is stopped at the end. A
block marked `no-run` must say why on its first line (`# not run: REASON`). Blocks that
need QEMU or spice-gtk skip without them, unless TRIVMC_REQUIRE_INTEROP=1.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.docs_runner.blocks import Block, parse
from tests.docs_runner.run import ROOT, page_session
from tests.interop.tools import require_gtk, require_qemu

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def examples(path: Path) -> list[Block]:
    return [b for b in parse(path) if b.kind != "other"]


def needs(blocks: list[Block]) -> None:
    code = "".join(b.code for b in blocks if b.kind in ("python", "shell") and not b.no_run)
    if "qemu-system-x86_64" in code:
        require_qemu()
    if "gtk_client.py" in code:
        require_gtk()


def runnable(path: Path) -> list[Block]:
    return [b for b in examples(path) if not b.no_run]


def test_every_no_run_block_says_why() -> None:
    """On every page (those without a runnable block too)."""
    for path in PAGES:
        for b in examples(path):
            assert not b.no_run or b.reason, f"{b.where}: a no-run block needs `# not run: WHY`"


RUNNABLE = [p for p in PAGES if any(b.kind in ("python", "shell") for b in runnable(p))]


@pytest.mark.parametrize("path", RUNNABLE, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_examples(path: Path) -> None:
    blocks = runnable(path)
    needs(blocks)
    with page_session() as page:
        for block in blocks:
            page.run(block)


def test_runner_conventions() -> None:
    """The runner's own conventions, on a small page."""
    text = (
        "```sh\n"
        "trivmc serve --listen 127.0.0.1:0 --control unix:ctl.sock &  # waited for\n"
        "trivmc ctl ctl.sock query-spice > spice.json\n"
        "```\n\n"
        "```toml file=x.toml\nname = 'x'\n```\n\n"
        "```python\nimport json\nprint(json.load(open('spice.json')))\n"
        "assert open('x.toml').read() == \"name = 'x'\\n\"\n```\n\n"
        "```sh no-run\n# not run: a test of the marker\nexit 1\n```\n"
    )
    with page_session() as page:
        md = page.dir / "page.md"
        md.write_text(text)
        blocks = parse(md)
        assert [b.kind for b in blocks] == ["shell", "file", "python", "shell"]
        assert blocks[3].no_run and blocks[3].reason == "a test of the marker"
        for b in blocks[:3]:
            page.run(b)
        bad = page.dir / "bad.md"
        bad.write_text("```sh\nfalse\n```\n")
        with pytest.raises(AssertionError, match="exit status 1"):
            page.run(parse(bad)[0])
