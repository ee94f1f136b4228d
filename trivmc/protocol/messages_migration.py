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
        """Decode the fixed part and the strings; raises `ProtocolError` (naming message
        `name`) when a string lies outside the body or the host is empty or too long."""
        port, sport, host_size, host_at, subject_size, subject_at = unpack_fixed(_DST, body, name)
        if not 0 < host_size <= MAX_HOST:
            raise ProtocolError(f"{name}: host of {host_size} bytes")
        host = _string(body, host_at, host_size, name, "host")
        subject = _string(body, subject_at, subject_size, name, "certificate subject")
        return cls(port, sport, host, subject)

    @property
    def host_text(self) -> str:
        """The host as text (ASCII, undecodable bytes replaced)."""
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
    """MIGRATE_BEGIN: where the VM goes, for a semi-seamless move."""

    TYPE: ClassVar[int] = MsgMain.MIGRATE_BEGIN
    dst: MigrationDstInfo

    def encode(self) -> bytes:
        """The destination's body."""
        return self.dst.encode()

    @classmethod
    def decode(cls, body: Body) -> Self:
        """Decode; raises `ProtocolError` as `MigrationDstInfo.decode` does."""
        return cls(MigrationDstInfo.decode(body, "MIGRATE_BEGIN"))


@dataclass(frozen=True, slots=True)
class MainMigrateSwitchHost:
    """MIGRATE_SWITCH_HOST: where the client reconnects after the move."""

    TYPE: ClassVar[int] = MsgMain.MIGRATE_SWITCH_HOST
    dst: MigrationDstInfo

    def encode(self) -> bytes:
        """The destination's body."""
        return self.dst.encode()

    @classmethod
    def decode(cls, body: Body) -> Self:
        """Decode; raises `ProtocolError` as `MigrationDstInfo.decode` does."""
        return cls(MigrationDstInfo.decode(body, "MIGRATE_SWITCH_HOST"))


@dataclass(frozen=True, slots=True)
class MainMigrateBeginSeamless:
    """MIGRATE_BEGIN_SEAMLESS: the destination and the source's migration protocol version."""

    TYPE: ClassVar[int] = MsgMain.MIGRATE_BEGIN_SEAMLESS
    dst: MigrationDstInfo
    src_version: int

    def encode(self) -> bytes:
        """The destination's body with the version after its fixed part."""
        return self.dst.encode(_VERSION.pack(self.src_version))

    @classmethod
    def decode(cls, body: Body) -> Self:
        """Decode; raises `ProtocolError` as `MigrationDstInfo.decode` does, or when the
        version is short."""
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


# ---- the main channel's MIGRATE_DATA body (spice-server's SpiceMigrateDataMain) ----

MAIN_MIGRATE_MAGIC = b"MNMD"  # SPICE_MIGRATE_DATA_MAIN_MAGIC, a little-endian u32
MAIN_MIGRATE_VERSION = 1  # SPICE_MIGRATE_DATA_MAIN_VERSION
# header (magic, version); the agent's char device (version, connected, client tokens,
# send tokens, write_size, write_num_client_tokens, write_data_ptr);
# client_agent_started; agent2client (chunk_header_size, chunk header port and size,
# msg_header_done, msg_header_partial_len, msg_header_ptr, msg_remaining,
# msg_filter_result); client2agent (msg_remaining, msg_filter_result). Packed.
_MAIN_MD = struct.Struct("<4sI IBIIIII B I II B III B IB")
MAIN_MIGRATE_DATA_SIZE = _MAIN_MD.size  #: 65: 8 of header + sizeof(SpiceMigrateDataMain) 57
VD_AGENT_MESSAGE_HEADER = 20  # sizeof(VDAgentMessage): a partial one is shorter
# a body carries at most the fixed part, a partial agent message header and the bytes
# the source still had to write to its agent; trivmc has no agent, and refuses more
MAIN_MIGRATE_DATA_MAX = 4096  #: the largest main MIGRATE_DATA body decoded


@dataclass(frozen=True, slots=True)
class MainMigrateData:
    """The main channel's MIGRATE_DATA body: the guest agent's state (trivmc never has
    an agent, so it sends `MainMigrateData()`, as spice-server without a vdagent: an
    empty char device, not connected, zeros). Offsets count from the body's start."""

    version: int = MAIN_MIGRATE_VERSION
    char_device_version: int = 1
    agent_connected: int = 0
    num_client_tokens: int = 0
    num_send_tokens: int = 0
    write_size: int = 0
    write_num_client_tokens: int = 0
    write_data_ptr: int = 0
    client_agent_started: int = 0
    chunk_header_size: int = 0
    chunk_port: int = 0
    chunk_size: int = 0
    msg_header_done: int = 0
    msg_header_partial_len: int = 0
    msg_header_ptr: int = 0
    agent_msg_remaining: int = 0
    agent_msg_filter_result: int = 0
    client_msg_remaining: int = 0
    client_msg_filter_result: int = 0

    def encode(self) -> bytes:
        """The fixed 65 bytes (no partial agent header, no agent write data)."""
        return _MAIN_MD.pack(
            MAIN_MIGRATE_MAGIC,
            self.version,
            self.char_device_version,
            self.agent_connected,
            self.num_client_tokens,
            self.num_send_tokens,
            self.write_size,
            self.write_num_client_tokens,
            self.write_data_ptr,
            self.client_agent_started,
            self.chunk_header_size,
            self.chunk_port,
            self.chunk_size,
            self.msg_header_done,
            self.msg_header_partial_len,
            self.msg_header_ptr,
            self.agent_msg_remaining,
            self.agent_msg_filter_result,
            self.client_msg_remaining,
            self.client_msg_filter_result,
        )

    @classmethod
    def decode(cls, body: Body, max_size: int = MAIN_MIGRATE_DATA_MAX) -> Self:
        """A migration target's checked decode. Raises `ProtocolError` (its
        `TruncatedMessage` for a short body) naming what is wrong: a body above
        `max_size` (checked first), the magic, a version above 1 (MNMD or char device),
        `connected` not 0 or 1, a partial agent header of a whole header or more, or an
        agent header or write data that is not inside the body after the fixed part."""
        name = "main MIGRATE_DATA"
        if len(body) > max_size:
            raise ProtocolError(f"{name}: {len(body)} bytes, above the bound {max_size}")
        _, version, *rest = unpack_fixed(_MAIN_MD, body, name)
        magic = bytes(body[:4])
        if magic != MAIN_MIGRATE_MAGIC:
            raise ProtocolError(f"{name}: bad magic {magic!r}, expected b'MNMD'")
        if version > MAIN_MIGRATE_VERSION:
            raise ProtocolError(f"{name}: MNMD version {version} above {MAIN_MIGRATE_VERSION}")
        data = cls(version, *rest)
        if data.char_device_version > 1:
            raise ProtocolError(f"{name}: char-device version {data.char_device_version} above 1")
        if data.agent_connected not in (0, 1):
            raise ProtocolError(f"{name}: connected is {data.agent_connected}")
        if data.msg_header_partial_len >= VD_AGENT_MESSAGE_HEADER:
            raise ProtocolError(
                f"{name}: partial agent message header of {data.msg_header_partial_len} bytes"
            )
        for what, at, size in (
            ("partial agent message header", data.msg_header_ptr, data.msg_header_partial_len),
            ("agent write data", data.write_data_ptr, data.write_size),
        ):
            if size and not MAIN_MIGRATE_DATA_SIZE <= at <= len(body) - size:
                raise ProtocolError(
                    f"{name}: {what} at {at} ({size} bytes) is outside the {len(body)}-byte body"
                )
        return data
