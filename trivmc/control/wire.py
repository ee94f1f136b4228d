"""QMP's wire format, sans-IO: JSON values in, JSON lines out (no trio here).

QMP clients do not all end a command with a newline (`qemu.qmp` sends none), so input
is split into top-level JSON values by a small scanner that follows nesting and
strings, as QEMU's json-streamer does, then each value is parsed with `json.loads`.
A value is bounded (`MAX_VALUE`) before it is parsed; past that, the stream cannot be
resynchronised and the connection should end (`ValueTooLarge`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

MAX_VALUE = 1 << 20  # bytes of one JSON value: far above any command's arguments
WHITESPACE = frozenset(b" \t\r\n")
OPENERS = {ord("{"), ord("[")}
CLOSERS = {ord("}"), ord("]")}


class ValueTooLarge(Exception):
    """A JSON value longer than MAX_VALUE: the connection should end."""


@dataclass(frozen=True)
class Value:
    """One parsed top-level JSON value."""

    value: Any


@dataclass(frozen=True)
class BadInput:
    """Input that is not one well-formed JSON value; QMP answers it with an error."""

    desc: str


class JsonStream:
    """Feed bytes, get the top-level JSON values (or BadInput) they complete."""

    def __init__(self, max_value: int = MAX_VALUE) -> None:
        self.max_value = max_value
        self._buf = bytearray()
        self._pos = 0  # scanned up to here
        self._start = -1  # where the current value began (-1: between values)
        self._depth = 0
        self._in_string = False
        self._escape = False

    def feed(self, data: bytes) -> list[Value | BadInput]:
        """Scan `data`; return every value it completes, in order. Raises ValueTooLarge
        when a value grows past the bound."""
        self._buf += data
        out: list[Value | BadInput] = []
        buf = self._buf
        while self._pos < len(buf):
            c = buf[self._pos]
            self._pos += 1
            if self._start < 0:  # between values
                if c in WHITESPACE:
                    continue
                self._start = self._pos - 1
                if c in OPENERS:
                    self._depth = 1
                elif c in CLOSERS:
                    out.append(BadInput(f"JSON parse error, stray '{chr(c)}'"))
                    self._start = -1
                elif c == ord('"'):
                    self._depth = 0
                    self._in_string = True
                else:
                    self._depth = 0
                continue
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif c == ord("\\"):
                    self._escape = True
                elif c == ord('"'):
                    self._in_string = False
                    if self._depth == 0:
                        out.append(self._take(self._pos))
                continue
            if c == ord('"'):
                self._in_string = True
            elif self._depth == 0:  # a bare scalar ends at whitespace or a bracket
                if c in WHITESPACE or c in OPENERS or c in CLOSERS or c == ord('"'):
                    self._pos -= 1
                    out.append(self._take(self._pos))
            elif c in OPENERS:
                self._depth += 1
            elif c in CLOSERS:
                self._depth -= 1
                if self._depth == 0:
                    out.append(self._take(self._pos))
        if self._start >= 0 and len(buf) - self._start > self.max_value:
            raise ValueTooLarge(f"a JSON value over {self.max_value} bytes")
        if self._start < 0:  # nothing pending: drop what was scanned
            del buf[: self._pos]
            self._pos = 0
        elif self._start > 0:
            del buf[: self._start]
            self._pos -= self._start
            self._start = 0
        return out

    def _take(self, end: int) -> Value | BadInput:
        raw = bytes(self._buf[self._start : end])
        self._start = -1
        self._depth = 0
        try:
            return Value(json.loads(raw))
        except (ValueError, RecursionError) as e:
            return BadInput(f"JSON parse error, {e}")


def encode(obj: Any) -> bytes:
    """One QMP message: compact-ish JSON and a CRLF, as QEMU ends its lines."""
    return json.dumps(obj).encode() + b"\r\n"


def greeting(version: tuple[int, int, int], package: str) -> dict[str, Any]:
    """The greeting QMP clients expect: QEMU's shape, with trivmc's version."""
    major, minor, micro = version
    return {
        "QMP": {
            "version": {
                "qemu": {"major": major, "minor": minor, "micro": micro},
                "package": package,
            },
            "capabilities": [],
        }
    }


def reply(result: Any, cmd_id: Any = None, *, has_id: bool = False) -> dict[str, Any]:
    msg: dict[str, Any] = {"return": result}
    if has_id:
        msg["id"] = cmd_id
    return msg


def error(cls: str, desc: str, cmd_id: Any = None, *, has_id: bool = False) -> dict[str, Any]:
    msg: dict[str, Any] = {"error": {"class": cls, "desc": desc}}
    if has_id:
        msg["id"] = cmd_id
    return msg


def event(name: str, data: dict[str, Any] | None, now: float | None = None) -> dict[str, Any]:
    """An event as QEMU sends it (`timestamp` in seconds and microseconds)."""
    t = time.time() if now is None else now
    seconds = int(t)
    msg: dict[str, Any] = {
        "timestamp": {"seconds": seconds, "microseconds": int((t - seconds) * 1e6)},
        "event": name,
    }
    if data is not None:
        msg["data"] = data
    return msg
