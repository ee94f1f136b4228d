"""Byte-exact vectors from the spec's worked example (SPICE-PROTOCOL.md section 9)."""

from __future__ import annotations

import lz4.block

from trivmc.protocol import (
    ChannelType,
    LinkError,
    LinkHeader,
    LinkMess,
    LinkReply,
    MainChannelsList,
    MainInit,
    MainName,
    MessageEncoder,
    MsgMain,
    MsgVmc,
    PortEventMsg,
    PortInit,
    ServerLink,
    compress_body,
    decompress_body,
    error_reply,
)

H = bytes.fromhex


def test_client_main_link_bytes() -> None:
    wire = H(
        "52454451 02000000 02000000 1a000000"
        " 00000000 01 00 01000000 01000000 12000000 0d000000 0f000000".replace(" ", "")
    )
    hdr = LinkHeader.decode(wire[:16])
    assert (hdr.magic, hdr.major, hdr.minor, hdr.size) == (b"REDQ", 2, 2, 26)
    mess = LinkMess.decode(wire[16:])
    assert mess == LinkMess(0, ChannelType.MAIN, 0, (0x0D,), (0x0F,))
    assert LinkHeader(len(mess.encode())).encode() + mess.encode() == wire


def test_port_link_mess_bytes() -> None:
    body = H("68d61d33 0a 00 01000000 00000000 12000000 0d000000".replace(" ", ""))
    mess = LinkMess.decode(body)
    assert mess.connection_id == 0x331DD668
    assert (mess.channel_type, mess.channel_id) == (10, 0)
    assert mess.common_caps == (0x0D,) and mess.channel_caps == ()
    assert mess.encode() == body


def test_server_reply_layout(link_key) -> None:  # type: ignore[no-untyped-def]
    reply = LinkReply(0, link_key.public_der, (0x0B,), (0x0F,)).encode()
    wire = LinkHeader(len(reply)).encode() + reply
    assert wire[:16] == H("52454451020000000200000 0ba000000".replace(" ", ""))
    assert wire[16:20] == bytes(4)
    assert wire[20:38] == H("30819f300d06092a864886f70d010101050003818d00")[:18]
    assert wire[20 + 162 :] == H("01000000010000 00b20000000b0000000f000000".replace(" ", ""))
    assert LinkReply.decode(reply) == LinkReply(0, link_key.public_der, (0x0B,), (0x0F,))


def test_error_replies() -> None:
    prefix = H("524544510200000002000000b2000000")
    assert error_reply(LinkError.INVALID_MAGIC) == prefix + H("02000000") + bytes(174)
    for wire, code in (
        (b"XXXX" + bytes(12), LinkError.INVALID_MAGIC),
        (H("52454451030000000200000000000000"), LinkError.VERSION_MISMATCH),
        (H("52454451020000000200000088130000"), LinkError.INVALID_DATA),  # size 5000
    ):
        (ev,) = ServerLink().feed(wire)
        assert ev.code == code  # type: ignore[union-attr]
        assert ev.data == prefix + code.to_bytes(4, "little") + bytes(174)  # type: ignore[union-attr]


def test_main_messages() -> None:
    enc = MessageEncoder(mini_header=True)
    init = MainInit(0x331DD668, 0, 1, 1, 0, 10, 0x007E822E, 0)
    assert enc.encode(MsgMain.INIT, init.encode()) == H(
        "6700200000006 8d61d33000000000100000001000000000000000a0000002e827e0000000000".replace(
            " ", ""
        )
    )
    assert MainInit.decode(init.encode()) == init
    assert enc.encode(MsgMain.CHANNELS_LIST, MainChannelsList(((10, 0),)).encode()) == H(
        "680006000000010000000a00"
    )
    name = MainName(b"trivmc-anchor")
    assert (
        enc.encode(MsgMain.NAME, name.encode()) == H("7100120000000e000000") + b"trivmc-anchor\0"
    )


def test_port_messages() -> None:
    enc = MessageEncoder(mini_header=True)
    init = PortInit(b"org.trivmc.test.0", True)
    assert enc.encode(MsgVmc.PORT_INIT, init.encode()) == (
        H("c9001b000000120000000900000001") + b"org.trivmc.test.0\0"
    )
    assert PortInit.decode(init.encode()) == init
    assert enc.encode(201, PortEventMsg(2).encode()) == H("c9000100000002")
    assert enc.encode(MsgVmc.DATA, b"hello") == H("65000500000068656c6c6f")


def test_full_header_example() -> None:
    enc = MessageEncoder(mini_header=False)
    enc.serial = 2
    assert enc.encode(MsgVmc.DATA, b"abcd") == H("03000000000000006500040000000000000061626364")


def test_compressed_data_example() -> None:
    data = bytes(range(256)) * 8
    body = compress_body(data)
    assert body is not None
    assert body[:5] == H("0100080000") and len(body) - 5 == 273
    assert body[5:] == lz4.block.compress(data, store_size=False)
    assert decompress_body(body, 1 << 20) == data
