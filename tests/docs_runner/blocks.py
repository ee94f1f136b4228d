"""Find the fenced code blocks of a Markdown page and sort them into what the runner does."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

SHELL = {"sh", "shell", "bash", "console"}
PYTHON = {"python", "py"}
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
REASON = re.compile(r"^\s*#\s*not run:\s*(?P<reason>\S.*)$")


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    words: list[str]
    code: str
    options: dict[str, str] = field(default_factory=dict)

    @property
    def no_run(self) -> bool:
        return "no-run" in self.words

    @property
    def file(self) -> str | None:
        """`file=NAME` in the info string: the block is written to NAME in the page's
        directory before the blocks after it run."""
        return self.options.get("file")

    @property
    def reason(self) -> str | None:
        """A no-run block's reason: its first line, `# not run: REASON`."""
        first = self.code.splitlines()[0] if self.code else ""
        m = REASON.match(first)
        return m.group("reason") if m else None

    @property
    def kind(self) -> str:
        """python, shell, file (written, not run), or other (not an example)."""
        if self.file:
            return "file"
        if self.lang in PYTHON:
            return "python"
        if self.lang in SHELL:
            return "shell"
        return "other"

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line}"


def parse(path: Path) -> list[Block]:
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, indent = m.group("fence"), len(m.group("indent"))
        info = m.group("info").strip().split()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines):
            stripped = lines[i].strip()
            if stripped.startswith(fence[0] * len(fence)) and set(stripped) == {fence[0]}:
                break
            body.append(lines[i][indent:] if lines[i][:indent].isspace() else lines[i])
            i += 1
        i += 1
        lang = info[0] if info else ""
        words = info[1:]
        options = dict(w.split("=", 1) for w in words if "=" in w)
        blocks.append(Block(path, start + 1, lang, words, "\n".join(body) + "\n", options))
    return blocks
