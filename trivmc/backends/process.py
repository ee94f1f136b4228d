"""The exec: backend: a child process per client session, as the peer."""

from __future__ import annotations

import shlex
import subprocess

import trio

from .connecting import ConnectingBackend


class ExecBackend(ConnectingBackend):
    """A child process per client: its stdin gets the client's bytes, its stdout goes
    back. It is killed and reaped when the client leaves."""

    def __init__(self, command: str) -> None:
        super().__init__(reconnect=0)
        self.command = command
        self.name = f"exec:{command}"
        self.processes_reaped = 0

    async def open_peer(self) -> trio.abc.Stream:
        argv = shlex.split(self.command)
        if not argv:
            raise OSError("empty command")
        proc = await trio.lowlevel.open_process(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None
        )
        assert proc.stdin is not None and proc.stdout is not None
        return _ProcessStream(proc, self)


class _ProcessStream(trio.abc.HalfCloseableStream):
    """A child's stdin/stdout as one stream; closing it kills and reaps the child."""

    def __init__(self, proc: trio.Process, owner: ExecBackend) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self._stdin: trio.abc.SendStream = proc.stdin
        self._stdout: trio.abc.ReceiveStream = proc.stdout
        self.proc = proc
        self.owner = owner

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stdin.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stdin.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stdin.aclose()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._stdout.receive_some(max_bytes)

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            try:
                await trio.aclose_forcefully(self._stdin)
                await trio.aclose_forcefully(self._stdout)
            finally:
                if self.proc.returncode is None:
                    self.proc.kill()
                await self.proc.wait()
                self.owner.processes_reaped += 1
