"""SPICE protocol constants (spice-protocol 0.14): channel types, message ids,
capabilities, link errors, port events, compression types."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import IntEnum, IntFlag

MAGIC = b"REDQ"
VERSION_MAJOR = 2
VERSION_MINOR = 2
TICKET_SIZE = 128  #: bytes of an RSA-encrypted ticket
PUBKEY_SIZE = 162  #: bytes of the link reply's DER public key (RSA-1024)
MAX_PASSWORD_LENGTH = 60  #: the longest ticket password, in bytes
LZ4_THRESHOLD = 1000  #: compress only payloads larger than this


class ChannelType(IntEnum):
    """SPICE channel types (spice-protocol's SPICE_CHANNEL_*)."""

    MAIN = 1
    DISPLAY = 2
    INPUTS = 3
    CURSOR = 4
    PLAYBACK = 5
    RECORD = 6
    TUNNEL = 7
    SMARTCARD = 8
    USBREDIR = 9
    PORT = 10
    WEBDAV = 11


#: The channel types trivmc hosts.
VMC_CHANNEL_TYPES = frozenset({ChannelType.USBREDIR, ChannelType.PORT, ChannelType.WEBDAV})


class LinkError(IntEnum):
    """The link reply's error codes (SPICE_LINK_ERR_*); OK is 0."""

    OK = 0
    ERROR = 1
    INVALID_MAGIC = 2
    INVALID_DATA = 3
    VERSION_MISMATCH = 4
    NEED_SECURED = 5
    NEED_UNSECURED = 6
    PERMISSION_DENIED = 7
    BAD_CONNECTION_ID = 8
    CHANNEL_NOT_AVAILABLE = 9


class CommonCap(IntEnum):
    """Common capabilities (bit numbers)."""

    PROTOCOL_AUTH_SELECTION = 0
    AUTH_SPICE = 1
    AUTH_SASL = 2
    MINI_HEADER = 3


class MainCap(IntEnum):
    """Main channel capabilities (bit numbers)."""

    SEMI_SEAMLESS_MIGRATE = 0
    NAME_AND_UUID = 1
    AGENT_CONNECTED_TOKENS = 2
    SEAMLESS_MIGRATE = 3


class VmcCap(IntEnum):
    """spicevmc channel capabilities (bit numbers)."""

    DATA_COMPRESS_LZ4 = 0


class AuthMechanism(IntEnum):
    """Authentication mechanisms a client may select (SPICE ticket, SASL)."""

    SPICE = 1
    SASL = 2


class MsgCommon(IntEnum):
    """Server -> client messages of every channel."""

    MIGRATE = 1
    MIGRATE_DATA = 2
    SET_ACK = 3
    PING = 4
    WAIT_FOR_CHANNELS = 5
    DISCONNECTING = 6
    NOTIFY = 7
    LIST = 8


class MsgcCommon(IntEnum):
    """Client -> server messages of every channel."""

    ACK_SYNC = 1
    ACK = 2
    PONG = 3
    MIGRATE_FLUSH_MARK = 4
    MIGRATE_DATA = 5
    DISCONNECTING = 6


class MigrateFlags(IntFlag):
    """SPICE_MSG_MIGRATE's flags: the client must answer MIGRATE_FLUSH_MARK
    (NEED_FLUSH); the server sends MIGRATE_DATA (NEED_DATA_TRANSFER). VMC channels: both."""

    NEED_FLUSH = 1
    NEED_DATA_TRANSFER = 2


class MsgMain(IntEnum):
    """Server -> client main channel messages."""

    MIGRATE_BEGIN = 101
    MIGRATE_CANCEL = 102
    INIT = 103
    CHANNELS_LIST = 104
    MOUSE_MODE = 105
    MULTI_MEDIA_TIME = 106
    AGENT_CONNECTED = 107
    AGENT_DISCONNECTED = 108
    AGENT_DATA = 109
    AGENT_TOKEN = 110
    MIGRATE_SWITCH_HOST = 111
    MIGRATE_END = 112
    NAME = 113
    UUID = 114
    AGENT_CONNECTED_TOKENS = 115
    MIGRATE_BEGIN_SEAMLESS = 116
    MIGRATE_DST_SEAMLESS_ACK = 117
    MIGRATE_DST_SEAMLESS_NACK = 118


class MsgcMain(IntEnum):
    """Client -> server main channel messages."""

    CLIENT_INFO = 101
    MIGRATE_CONNECTED = 102
    MIGRATE_CONNECT_ERROR = 103
    ATTACH_CHANNELS = 104
    MOUSE_MODE_REQUEST = 105
    AGENT_START = 106
    AGENT_DATA = 107
    AGENT_TOKEN = 108
    MIGRATE_END = 109
    MIGRATE_DST_DO_SEAMLESS = 110
    MIGRATE_CONNECTED_SEAMLESS = 111
    QUALITY_INDICATOR = 112


class MsgVmc(IntEnum):
    """Server -> client spicevmc (usbredir, port, webdav) messages."""

    DATA = 101
    COMPRESSED_DATA = 102
    PORT_INIT = 201
    PORT_EVENT = 202


class MsgcVmc(IntEnum):
    """Client -> server spicevmc messages."""

    DATA = 101
    COMPRESSED_DATA = 102
    PORT_EVENT = 201


class PortEvent(IntEnum):
    """Port channel events (SPICE_PORT_EVENT_*)."""

    OPENED = 0
    CLOSED = 1
    BREAK = 2


class CompressionType(IntEnum):
    """SPICEVMC_COMPRESSED_DATA's compression types."""

    NONE = 0
    LZ4 = 1


def caps_to_words(caps: Iterable[int]) -> list[int]:
    """Encode capability bit numbers as u32 words (cap N = bit N%32 of word N//32)."""
    words: list[int] = []
    for cap in caps:
        idx = cap // 32
        while len(words) <= idx:
            words.append(0)
        words[idx] |= 1 << (cap % 32)
    return words


def caps_from_words(words: Sequence[int]) -> list[int]:
    """The capability numbers set in `words` (the inverse of `caps_to_words`)."""
    return [32 * i + bit for i, w in enumerate(words) for bit in range(32) if w >> bit & 1]


def has_cap(words: Sequence[int], cap: int) -> bool:
    """True when capability `cap` is set in `words` (missing words count as zero)."""
    idx = cap // 32
    return idx < len(words) and bool(words[idx] >> (cap % 32) & 1)
