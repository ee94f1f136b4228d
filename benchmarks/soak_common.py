"""What the soak's processes share: line commands on pipes, the fd limit."""

from __future__ import annotations

import os
import resource
import sys

import trio

MAX_LINE = 16 * 1024 * 1024


def raise_nofile_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; return the new soft
    limit (1000 sessions need several thousand sockets in one process)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


class LineReader:
    """Lines (without their newline) from a trio receive stream."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self._buf = bytearray()
        self._eof = False

    async def readline(self) -> str | None:
        """The next line; None at the end of the stream."""
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[: end + 1]
                return line.decode()
            if self._eof:
                if self._buf:
                    line = bytes(self._buf)
                    self._buf.clear()
                    return line.decode()
                return None
            if len(self._buf) > MAX_LINE:
                raise ValueError(f"a line longer than {MAX_LINE} bytes")
            data = await self.stream.receive_some(65536)
            if not data:
                self._eof = True
            self._buf += data


def stdin_lines() -> LineReader:
    """Lines of this process's stdin (the soak driver's commands)."""
    return LineReader(trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())))


def reply(line: str) -> None:
    """One line on stdout, flushed (the driver waits for it)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
