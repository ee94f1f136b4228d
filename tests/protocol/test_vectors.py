"""Byte-exact vectors from the spec's worked example (SPICE-PROTOCOL.md section 9)."""

from __future__ import annotations

import lz4.block

from trivmc.protocol import (
    ChannelType,
    ClientLink,
    CommonCap,
    LinkError,
    LinkHeader,
    LinkMess,
    LinkReply,
    LinkReplyReceived,
    LinkRequest,
    MainChannelsList,
    MainInit,
    MainName,
    MessageDecoder,
    MessageEncoder,
    MsgcCommon,
    MsgCommon,
    MsgcVmc,
    MsgMain,
    MsgVmc,
    Notify,
    Ping,
    Pong,
    PortEventMsg,
    PortInit,
    ServerLink,
    TicketReceived,
    VmcCap,
    VmcData,
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
    assert wire[:16] == H("524544510200000002000000ba000000")
    assert wire[16:20] == bytes(4)
    assert wire[20:38] == H("30819f300d06092a864886f70d010101050003818d00")[:18]
    assert wire[20 + 162 :] == H("0100000001000000b20000000b0000000f000000")
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
        "67002000000068d61d33000000000100000001000000000000000a0000002e827e0000000000"
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


def test_spice_gtk_main_link_mess_from_client_machine() -> None:
    gtk = ClientLink(
        0,
        ChannelType.MAIN,
        0,
        channel_caps=[0, 1, 2, 3],
        common_caps=[CommonCap.PROTOCOL_AUTH_SELECTION, CommonCap.AUTH_SASL, 3],
    )
    assert gtk.initiate() == H(
        "5245445102000000020000001a0000000000000001000100000001000000120000000d0000000f000000"
    )


def test_server_accept_bytes_match_section_9(link_key) -> None:  # type: ignore[no-untyped-def]
    tail = "01000000 01000000 b2000000 0b000000".replace(" ", "")
    for mess, caps, channel_word in (
        (ClientLink(0, ChannelType.MAIN, 0, [0, 1, 2, 3]), [0, 1, 2, 3], "0f000000"),
        (ClientLink(0x331DD668, ChannelType.PORT, 0), [VmcCap.DATA_COMPRESS_LZ4], "01000000"),
    ):
        server = ServerLink()
        (req,) = server.feed(mess.initiate())
        assert isinstance(req, LinkRequest)
        out = server.accept(link_key.public_der, caps)
        assert out[:20] == H("524544510200000002000000ba000000") + bytes(4)
        assert out[20:182] == link_key.public_der
        assert out[182:] == H(tail + channel_word)
        # the client answers with mechanism AUTH_SPICE then the 128-byte ticket
        (got,) = mess.feed(out)
        assert isinstance(got, LinkReplyReceived)
        sent = got.data
        assert sent[:4] == H("01000000") and len(sent) == 132
        (ticket,) = server.feed(sent)
        assert isinstance(ticket, TicketReceived)
        assert server.result(LinkError.OK) == H("00000000")


def test_public_key_der_prefix(link_key) -> None:  # type: ignore[no-untyped-def]
    der = link_key.public_der
    assert len(der) == 162
    assert der[:22] == H("30819f300d06092a864886f70d010101050003818d00")
    assert der[22:29] == H("30818902818100")
    assert der[-5:] == H("0203010001")


def test_ping_pong_vectors() -> None:
    ping_wire = H("04000c000000010000001" + "4a032ee01000000")
    (msg,) = MessageDecoder(True, 100).feed(ping_wire)
    ping = Ping.decode(msg.body)
    assert msg.type == MsgCommon.PING and (ping.id, ping.timestamp) == (1, 0x1EE32A014)
    pong = MessageEncoder(True).encode(MsgcCommon.PONG, Pong(ping.id, ping.timestamp).encode())
    assert pong == H("03000c000000010000001" + "4a032ee01000000")
    padded = Ping(3, 5, 256_000).encode()
    assert len(padded) == 256_012 and Ping.decode(padded).padding == 256_000


def test_main_init_decodes_from_wire() -> None:
    body = H("68d61d3300000000010000000100000000000000" + "0a0000002e827e0000000000")
    init = MainInit.decode(body)
    assert init.session_id == 0x331DD668 and init.agent_tokens == 10
    assert init.multi_media_time == 0x7E822E and init.encode() == body


def test_data_and_notify_sizes() -> None:
    wire = H("650014000000") + b"hello from spice-gtk"
    (msg,) = MessageDecoder(True, 1 << 24).feed(wire)
    assert msg.type == MsgcVmc.DATA and VmcData.decode(msg.body).encode() == wire[6:]
    note = Notify(0, 1, 2, 0, b"x" * 28).encode()
    assert len(note) == 24 + 28 + 1 and note[20:24] == (28).to_bytes(4, "little")


def test_compressed_data_message_bytes() -> None:
    body = compress_body(bytes(range(256)) * 8)
    assert body is not None
    wire = MessageEncoder(True).encode(MsgVmc.COMPRESSED_DATA, body)
    assert wire[:16] == H("660016010000" + "01" + "00080000" + "fff1000102")
