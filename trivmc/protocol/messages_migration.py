"""Codecs of the main channel's migration messages (spice.proto's MigrationDstInfo).

MIGRATE_BEGIN, MIGRATE_SWITCH_HOST and MIGRATE_BEGIN_SEAMLESS tell the client where
the VM goes: u16 port, u16 sport (the TLS port), then the host and the certificate
subject, each as u32 size + u32 offset (from the start of the body) of a NUL-terminated
string placed after the fixed part. MIGRATE_BEGIN_SEAMLESS adds u32 src_mig_version
after the fixed part; the client's MIGRATE_DST_DO_SEAMLESS carries it to the
destination. Decoders check every size and offset against the body before reading.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, Self

from .constants import MsgcMain, MsgMain
from .errors import ProtocolError
from .message_base import Body, FixedLayout, unpack_fixed

_DST = struct.Struct("<HHIIII")  # port, sport, host size, offset, subject size, offset
_VERSION = struct.Struct("<I")
MAX_HOST = 1024  # a host name or address; more is not a host


@dataclass(frozen=True, slots=True)
class MigrationDstInfo:
    """Where the VM goes: `host` and `cert_subject` without their NUL; `port` 0 or
    `sport` 0 means that listener is absent."""

    port: int
    sport: int
    host: bytes
    cert_subject: bytes = b""

    def encode(self, extra: bytes = b"") -> bytes:
        """The fixed part, `extra` (fields that follow it), then the strings."""
        host = self.host + b"\0"
        subject = self.cert_subject + b"\0" if self.cert_subject else b""
        at = _DST.size + len(extra)
        subject_at = at + len(host) if subject else 0
        fixed = _DST.pack(self.port, self.sport, len(host), at, len(subject), subject_at)
        return fixed + extra + host + subject

    @classmethod
    def decode(cls, body: Body, name: str) -> Self:
        port, sport, host_size, host_at, subject_size, subject_at = unpack_fixed(_DST, body, name)
        if not 0 < host_size <= MAX_HOST:
            raise ProtocolError(f"{name}: host of {host_size} bytes")
        host = _string(body, host_at, host_size, name, "host")
        subject = _string(body, subject_at, subject_size, name, "certificate subject")
        return cls(port, sport, host, subject)

    @property
    def host_text(self) -> str:
        return self.host.decode("ascii", errors="replace")


def _string(body: Body, at: int, size: int, name: str, what: str) -> bytes:
    """The NUL-terminated string of `size` bytes at `at`, without its NUL."""
    if size == 0:
        return b""
    if at + size > len(body) or at < _DST.size:
        raise ProtocolError(f"{name}: {what} at {at} ({size} bytes) is outside the body")
    raw = bytes(body[at : at + size])
    return raw.split(b"\0", 1)[0]


@dataclass(frozen=True, slots=True)
class MainMigrateBegin:
    TYPE: ClassVar[int] = MsgMain.MIGRATE_BEGIN
    dst: MigrationDstInfo

    def encode(self) -> bytes:
        return self.dst.encode()

    @classmethod
    def decode(cls, body: Body) -> Self:
        return cls(MigrationDstInfo.decode(body, "MIGRATE_BEGIN"))


@dataclass(frozen=True, slots=True)
class MainMigrateSwitchHost:
    TYPE: ClassVar[int] = MsgMain.MIGRATE_SWITCH_HOST
    dst: MigrationDstInfo

    def encode(self) -> bytes:
        return self.dst.encode()

    @classmethod
    def decode(cls, body: Body) -> Self:
        return cls(MigrationDstInfo.decode(body, "MIGRATE_SWITCH_HOST"))


@dataclass(frozen=True, slots=True)
class MainMigrateBeginSeamless:
    TYPE: ClassVar[int] = MsgMain.MIGRATE_BEGIN_SEAMLESS
    dst: MigrationDstInfo
    src_version: int

    def encode(self) -> bytes:
        return self.dst.encode(_VERSION.pack(self.src_version))

    @classmethod
    def decode(cls, body: Body) -> Self:
        name = "MIGRATE_BEGIN_SEAMLESS"
        dst = MigrationDstInfo.decode(body, name)
        (version,) = unpack_fixed(_VERSION, bytes(body[_DST.size : _DST.size + 4]), name)
        return cls(dst, version)


@dataclass(frozen=True, slots=True)
class MainMigrateDstDoSeamless(FixedLayout):
    """The client asks the destination for a seamless move from `src_version`."""

    TYPE: ClassVar[int] = MsgcMain.MIGRATE_DST_DO_SEAMLESS
    _S: ClassVar[struct.Struct] = _VERSION
    src_version: int
