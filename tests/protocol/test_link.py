"""The server and client link machines against each other, in memory."""

from __future__ import annotations

import pytest

from trivmc.protocol import (
    ChannelType,
    ClientLink,
    CommonCap,
    Linked,
    LinkError,
    LinkEvent,
    LinkFailed,
    LinkKey,
    LinkReplyReceived,
    LinkRequest,
    ServerLink,
    TicketReceived,
    VmcCap,
    check_password,
    encrypt_ticket,
    verify_ticket,
)


def exchange(
    key: LinkKey,
    client: ClientLink,
    password: bytes | None,
    chunk: int = 7,
) -> tuple[ServerLink, list[object]]:
    """Run a whole link, feeding the server in `chunk`-byte pieces."""
    server = ServerLink()
    seen: list[object] = []
    to_server = bytearray()

    def feed_server(data: bytes) -> None:
        for i in range(0, len(data), chunk):
            for ev in server.feed(data[i : i + chunk]):
                seen.append(ev)
                if isinstance(ev, LinkRequest):
                    caps = [VmcCap.DATA_COMPRESS_LZ4] if ev.mess.channel_type != 1 else []
                    for cev in client.feed(server.accept(key.public_der, caps)):
                        seen.append(cev)
                        if isinstance(cev, LinkReplyReceived):
                            to_server.extend(cev.data)
                    for more in server.feed(b""):
                        seen.append(more)
                elif isinstance(ev, TicketReceived):
                    code = verify_ticket(key, ev.ticket, password)
                    for cev in client.feed(server.result(code) + b"\x67\x00"):
                        seen.append(cev)

    feed_server(client.initiate())
    feed_server(bytes(to_server))
    return server, seen


def reply_data(events: list[LinkEvent]) -> bytes:
    """What the client writes after the server's reply (`LinkReplyReceived.data`)."""
    (ev,) = events
    assert isinstance(ev, LinkReplyReceived), ev
    return ev.data


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_link_ok_with_password(link_key: LinkKey, chunk: int) -> None:
    client = ClientLink(0, ChannelType.MAIN, 0, password="pw")
    server, seen = exchange(link_key, client, b"pw", chunk)
    assert any(isinstance(e, LinkReplyReceived) for e in seen)
    linked = [e for e in seen if isinstance(e, Linked)]
    assert linked and linked[0].mini_header
    assert server.done and server.mini_header and client.done
    assert client.trailing == b"\x67\x00"


def test_wrong_password_denied(link_key: LinkKey) -> None:
    client = ClientLink(0, ChannelType.MAIN, 0, password="nope")
    server, seen = exchange(link_key, client, b"pw")
    fails = [e for e in seen if isinstance(e, LinkFailed)]
    assert fails and fails[0].code == LinkError.PERMISSION_DENIED
    assert not server.done


def test_ticketing_disabled_accepts_any(link_key: LinkKey) -> None:
    client = ClientLink(0, ChannelType.MAIN, 0, password="anything")
    server, _ = exchange(link_key, client, None)
    assert server.done


def test_without_auth_selection_and_mini_header(link_key: LinkKey) -> None:
    client = ClientLink(
        5, ChannelType.PORT, 0, [VmcCap.DATA_COMPRESS_LZ4], common_caps=[CommonCap.AUTH_SPICE]
    )
    server, seen = exchange(link_key, client, None)
    assert server.done and not server.mini_header and not client.mini_header
    req = next(e for e in seen if isinstance(e, LinkRequest))
    assert req.mess.connection_id == 5 and req.mess.has_channel(VmcCap.DATA_COMPRESS_LZ4)


def test_unknown_auth_mechanism_gets_invalid_data(link_key: LinkKey) -> None:
    client = ClientLink(0, ChannelType.MAIN, 0)
    server = ServerLink()
    (req,) = server.feed(client.initiate())
    assert isinstance(req, LinkRequest)
    server.accept(link_key.public_der)
    (ev,) = server.feed((2).to_bytes(4, "little"))
    assert isinstance(ev, LinkFailed) and ev.code == LinkError.INVALID_DATA
    assert ev.data == (3).to_bytes(4, "little")


def test_refuse_and_client_sees_error() -> None:
    client = ClientLink(0, ChannelType.WEBDAV, 0)
    server = ServerLink()
    server.feed(client.initiate())
    (ev,) = client.feed(server.refuse(LinkError.CHANNEL_NOT_AVAILABLE))
    assert isinstance(ev, LinkFailed) and ev.code == LinkError.CHANNEL_NOT_AVAILABLE


def test_caps_out_of_bounds_is_invalid_data() -> None:
    import struct

    body = struct.pack("<IBBIII", 0, 1, 0, 5, 0, 18)  # 5 caps words, none present
    hdr = b"REDQ" + struct.pack("<III", 2, 2, len(body))
    (ev,) = ServerLink().feed(hdr + body)
    assert isinstance(ev, LinkFailed) and ev.code == LinkError.INVALID_DATA


def test_ticket_rules(link_key: LinkKey) -> None:
    t = encrypt_ticket(link_key.public_der, "secret")
    assert verify_ticket(link_key, t, b"secret") == LinkError.OK
    assert verify_ticket(link_key, t, b"secre") == LinkError.PERMISSION_DENIED
    assert verify_ticket(link_key, t, b"") == LinkError.PERMISSION_DENIED
    assert (
        verify_ticket(link_key, t, b"secret", expiry=10.0, now=11.0) == LinkError.PERMISSION_DENIED
    )
    assert verify_ticket(link_key, t, b"secret", expiry=10.0, now=9.0) == LinkError.OK
    assert verify_ticket(link_key, bytes(128), None) == LinkError.PERMISSION_DENIED
    with pytest.raises(ValueError):
        check_password("x" * 61)
    assert check_password("x" * 60) == b"x" * 60


@pytest.mark.parametrize(
    ("client_mini", "server_mini", "expected"),
    [(True, True, True), (False, True, False), (True, False, False)],
)
def test_header_negotiation(
    link_key: LinkKey, client_mini: bool, server_mini: bool, expected: bool
) -> None:
    base = [CommonCap.PROTOCOL_AUTH_SELECTION, CommonCap.AUTH_SPICE]
    client = ClientLink(
        0, ChannelType.MAIN, 0, common_caps=base + [CommonCap.MINI_HEADER] * client_mini
    )
    server = ServerLink(base + [CommonCap.MINI_HEADER] * server_mini)
    linked = run_link(link_key, client, server)
    assert linked.mini_header is expected
    assert server.mini_header is expected and client.mini_header is expected


def run_link(key: LinkKey, client: ClientLink, server: ServerLink) -> Linked:
    """Drive both machines to completion (whole writes), return the client's Linked."""
    to_server = client.initiate()
    while to_server:
        data, to_server = to_server, b""
        for ev in server.feed(data):
            if isinstance(ev, LinkRequest):
                reply = server.accept(key.public_der, [VmcCap.DATA_COMPRESS_LZ4])
                to_server += reply_data(client.feed(reply))
                assert server.feed(b"") == []
            elif isinstance(ev, TicketReceived):
                (linked,) = client.feed(server.result(verify_ticket(key, ev.ticket, None)))
                assert isinstance(linked, Linked), linked
                return linked
            else:
                raise AssertionError(ev)
    raise AssertionError("link did not finish")


def test_server_without_auth_selection_reads_ticket_directly(link_key: LinkKey) -> None:
    server = ServerLink([CommonCap.AUTH_SPICE, CommonCap.MINI_HEADER])
    client = ClientLink(0, ChannelType.MAIN, 0)  # the client sets AUTH_SELECTION
    server.feed(client.initiate())
    assert not server.expects_mechanism
    out = reply_data(client.feed(server.accept(link_key.public_der)))
    assert len(out) == 128  # no mechanism word: only one side selects
    (ev,) = server.feed(out)
    assert isinstance(ev, TicketReceived)


def test_mechanism_sent_when_both_select(link_key: LinkKey) -> None:
    server = ServerLink()
    client = ClientLink(0, ChannelType.MAIN, 0)
    server.feed(client.initiate())
    assert server.expects_mechanism
    out = reply_data(client.feed(server.accept(link_key.public_der)))
    assert len(out) == 4 + 128 and out[:4] == b"\x01\x00\x00\x00"


def test_lz4_negotiation(link_key: LinkKey) -> None:
    client = ClientLink(7, ChannelType.USBREDIR, 0, [VmcCap.DATA_COMPRESS_LZ4])
    server = ServerLink()
    linked = run_link(link_key, client, server)
    assert linked.peer_lz4 and client.peer_lz4 and server.peer_lz4
    # spice-gtk port channels send no channel caps: the server must not compress
    client = ClientLink(7, ChannelType.PORT, 0)
    server = ServerLink()
    linked = run_link(link_key, client, server)
    assert linked.peer_lz4 and not server.peer_lz4
    # bit 0 on the main channel is SEMI_SEAMLESS_MIGRATE, not LZ4
    client = ClientLink(0, ChannelType.MAIN, 0, [0])
    server = ServerLink()
    assert not run_link(link_key, client, server).peer_lz4 and not server.peer_lz4


def test_server_trailing_data_after_ticket(link_key: LinkKey) -> None:
    client = ClientLink(0, ChannelType.MAIN, 0)
    server = ServerLink()
    server.feed(client.initiate())
    out = reply_data(client.feed(server.accept(link_key.public_der)))
    (ev,) = server.feed(out + b"\x68\x00\x00")
    assert isinstance(ev, TicketReceived)
    server.feed(b"\x00\x00\x00")
    assert server.result(LinkError.OK) == bytes(4)
    assert server.done and server.trailing == b"\x68\x00\x00\x00\x00\x00"
    server.feed(b"more")
    assert server.trailing.endswith(b"more")


def test_pipelined_mechanism_and_ticket_before_accept(link_key: LinkKey) -> None:
    # spice-html5 style: the client's bytes may already be buffered at accept()
    server = ServerLink()
    client = ClientLink(0, ChannelType.MAIN, 0)
    ticket = (1).to_bytes(4, "little") + bytes(128)
    (req,) = server.feed(client.initiate() + ticket)
    assert isinstance(req, LinkRequest)
    server.accept(link_key.public_der)
    (ev,) = server.feed(b"")  # the events of bytes buffered before accept()
    assert isinstance(ev, TicketReceived) and ev.ticket == bytes(128)
    assert server.result(LinkError.PERMISSION_DENIED) == b"\x07\x00\x00\x00"
    assert not server.done


def test_machines_refuse_out_of_order_calls(link_key: LinkKey) -> None:
    server = ServerLink()
    with pytest.raises(RuntimeError):
        server.accept(link_key.public_der)
    with pytest.raises(RuntimeError):
        server.result(LinkError.OK)
    with pytest.raises(RuntimeError):
        server.refuse(LinkError.ERROR)


def test_client_failures() -> None:
    with pytest.raises(ValueError):
        ClientLink(0, ChannelType.MAIN, 0, password="x" * 61)
    from trivmc.protocol import LinkReply, encode_reply, error_reply

    # a server that advertises AUTH_SELECTION but no mechanism the client knows
    client = ClientLink(0, ChannelType.MAIN, 0)
    client.initiate()
    reply = LinkReply(0, bytes(162), (1 << CommonCap.PROTOCOL_AUTH_SELECTION,), ())
    (ev,) = client.feed(encode_reply(reply))
    assert isinstance(ev, LinkFailed) and ev.code == LinkError.INVALID_DATA
    # a key that is not RSA-1024
    client = ClientLink(0, ChannelType.MAIN, 0, common_caps=[CommonCap.AUTH_SPICE])
    (ev,) = client.feed(encode_reply(LinkReply(0, b"\x30" + bytes(161))))
    assert isinstance(ev, LinkFailed) and ev.code == LinkError.INVALID_DATA
    # an error code this package does not know maps to ERROR
    client = ClientLink(0, ChannelType.MAIN, 0)
    (ev,) = client.feed(error_reply(LinkError.OK)[:16] + (77).to_bytes(4, "little") + bytes(174))
    assert isinstance(ev, LinkFailed) and ev.code == LinkError.ERROR
    assert client.feed(b"ignored after failure") == []


def test_client_result_codes(link_key: LinkKey) -> None:
    for code in (LinkError.BAD_CONNECTION_ID, LinkError.CHANNEL_NOT_AVAILABLE):
        client = ClientLink(12345, ChannelType.PORT, 0)
        client.initiate()
        server = ServerLink()
        server.feed(client.initiate())
        server.feed(reply_data(client.feed(server.accept(link_key.public_der))))
        (ev,) = client.feed(server.result(code))
        assert isinstance(ev, LinkFailed) and ev.code == code


def test_verify_ticket_needs_now_with_expiry(link_key: LinkKey) -> None:
    t = encrypt_ticket(link_key.public_der, "pw")
    with pytest.raises(ValueError):
        verify_ticket(link_key, t, "pw", expiry=1.0)
    assert verify_ticket(link_key, t, "pw") == LinkError.OK  # str passwords too
    assert verify_ticket(link_key, t[:100], None) == LinkError.PERMISSION_DENIED
    # only the bytes before the first NUL count; no password sends the plaintext NUL
    assert verify_ticket(link_key, encrypt_ticket(link_key.public_der, None), b"") == (
        LinkError.PERMISSION_DENIED
    )
    assert verify_ticket(link_key, encrypt_ticket(link_key.public_der, ""), None) == (LinkError.OK)


def test_bad_magic_refused_after_four_bytes() -> None:
    server = ServerLink()
    assert server.feed(b"RE") == []
    (ev,) = server.feed(b"DX")
    assert isinstance(ev, LinkFailed) and ev.code == LinkError.INVALID_MAGIC
    assert ev.data[16:20] == b"\x02\x00\x00\x00"
    assert ServerLink().feed(b"GET") == []
    (ev,) = ServerLink().feed(b"GET /")  # e.g. an HTTP request
    assert isinstance(ev, LinkFailed) and ev.code == LinkError.INVALID_MAGIC


@pytest.mark.parametrize("password", [None, "s3cret"])
def test_spice_html5_shifted_ticket_is_repaired(password: str | None) -> None:
    """spice-html5 drops a leading zero byte of the ciphertext and pads a zero at the
    end; the server puts it back instead of refusing about one link in 256."""
    from trivmc.protocol import encrypt_ticket, generate_key, verify_ticket

    key = generate_key()
    for _ in range(20000):
        ct = encrypt_ticket(key.public_der, password)
        if ct[0] == 0:
            break
    else:
        pytest.fail("no ciphertext with a leading zero byte in 20000 tries")
    shifted = ct[1:] + b"\0"
    assert verify_ticket(key, shifted, password) == LinkError.OK
    assert verify_ticket(key, ct, password) == LinkError.OK
    if password is not None:
        assert verify_ticket(key, shifted, "other") == LinkError.PERMISSION_DENIED
    garbage = bytes(127) + b"\0"
    assert verify_ticket(key, garbage, password) == LinkError.PERMISSION_DENIED
