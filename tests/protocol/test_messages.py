"""Round trips for every message codec, and short bodies refused with ProtocolError."""

from __future__ import annotations

from uuid import UUID

import pytest

from trivmc.protocol import (
    Ack,
    AckSync,
    CompressionType,
    Disconnecting,
    MainAttachChannels,
    MainCap,
    MainChannelsList,
    MainInit,
    MainMouseMode,
    MainMouseModeRequest,
    MainName,
    MainUuid,
    MessageEncoder,
    MsgMain,
    Notify,
    Ping,
    Pong,
    PortEventMsg,
    PortInit,
    ProtocolError,
    SetAck,
    TruncatedMessage,
    VmcCompressedData,
    VmcData,
    VmcMigrateDataHeader,
    WaitForChannel,
    WaitForChannels,
    caps_to_words,
    name_and_uuid,
)

SAMPLES = [
    SetAck(7, 20),
    Ping(3, 123456789, 0),
    Ping(4, 2**63, 256),
    Pong(3, 123456789),
    AckSync(0xFFFFFFFF),
    Ack(),
    Notify(1, 2, 1, 0, b"hello"),
    Disconnecting(99, 7),
    WaitForChannels((WaitForChannel(9, 0, 5), WaitForChannel(10, 1, 2**40))),
    MainInit(0xDEADBEEF, multi_media_time=42),
    MainAttachChannels(),
    MainChannelsList(((9, 0), (10, 0), (11, 0))),
    MainName(b"vm"),
    MainUuid(bytes(range(16))),
    MainMouseMode(3, 2),
    MainMouseModeRequest(2),
    VmcCompressedData(CompressionType.LZ4, 2048, b"\x00\x01"),
    PortInit(b"org.qemu.monitor.qmp.0", False),
    PortEventMsg(2),
    VmcMigrateDataHeader(True, 1, 2, 3, 4, pending=b"abc"),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg: object) -> None:
    body = msg.encode()  # type: ignore[attr-defined]
    assert type(msg).decode(body) == msg  # type: ignore[attr-defined]
    if not isinstance(msg, Ping | VmcCompressedData):  # their bodies are open-ended
        assert type(msg).decode(body + b"trailing") == msg  # type: ignore[attr-defined]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_truncated_refused(msg: object) -> None:
    body = msg.encode()  # type: ignore[attr-defined]
    if not body or isinstance(msg, VmcCompressedData):
        return  # empty or open-ended layouts
    # cut into the fixed part (or into Notify's message, past its NUL)
    cut = len(body) if isinstance(msg, Ping) else (2 if isinstance(msg, Notify) else 1)
    with pytest.raises(ProtocolError):
        type(msg).decode(body[: len(body) - cut])  # type: ignore[attr-defined]


def test_vmc_data_is_the_body() -> None:
    assert VmcData(b"abc").encode() == b"abc"
    assert bytes(VmcData.decode(memoryview(b"xyz")).data) == b"xyz"


def test_notify_body_has_trailing_nul() -> None:
    body = Notify(0, 0, 0, 0, b"abc").encode()
    assert len(body) == 24 + 3 + 1 and body.endswith(b"abc\0")


def test_migrate_data_bad_magic() -> None:
    body = bytearray(VmcMigrateDataHeader(True, 0, 0, 0, 0).encode())
    body[0:4] = b"XXXX"
    with pytest.raises(ProtocolError):
        VmcMigrateDataHeader.decode(bytes(body))


def test_port_init_name_out_of_bounds() -> None:
    with pytest.raises(TruncatedMessage):
        PortInit.decode(bytes.fromhex("ff000000090000000161"))


def test_name_and_uuid_only_to_a_client_with_the_cap() -> None:
    vm = UUID("12345678-9abc-def0-1234-56789abcdef0")
    with_cap = caps_to_words([MainCap.SEMI_SEAMLESS_MIGRATE, MainCap.NAME_AND_UUID])
    msgs = name_and_uuid(with_cap, "vm-é", vm)
    assert msgs == [
        (MsgMain.NAME, b"\x06\x00\x00\x00vm-\xc3\xa9\x00"),  # u32 length with the NUL
        (MsgMain.UUID, bytes.fromhex("123456789abcdef0123456789abcdef0")),  # RFC 4122 order
    ]
    enc = MessageEncoder(mini_header=True)
    assert enc.encode(*msgs[1]) == bytes.fromhex("720010000000") + vm.bytes
    assert MainName.decode(msgs[0][1]).text == "vm-é"
    assert MainUuid.decode(msgs[1][1]).as_uuid() == vm
    assert MainUuid.of(vm) == MainUuid(vm.bytes)
    assert name_and_uuid(with_cap, None, vm) == msgs[1:]  # each only when set
    assert name_and_uuid(with_cap, "vm-é", None) == msgs[:1]
    assert name_and_uuid(with_cap, None, None) == []
    without = caps_to_words([MainCap.SEMI_SEAMLESS_MIGRATE, MainCap.SEAMLESS_MIGRATE])
    assert name_and_uuid(without, "vm", vm) == []
    assert name_and_uuid([], "vm", vm) == []


def test_main_name_text_stops_at_a_nul_and_replaces_bad_utf8() -> None:
    assert MainName(b"a\0b").text == "a"
    assert MainName(b"\xffok").text == "\ufffdok"
    with pytest.raises(TruncatedMessage):
        MainName.decode(b"\x00\x00\x00\x00")  # a length of 0 has no room for the NUL
