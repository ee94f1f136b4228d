"""The server and client link machines against each other, in memory."""

from __future__ import annotations

import pytest

from trivmc.protocol import (
    ChannelType,
    ClientLink,
    CommonCap,
    KeyPool,
    Linked,
    LinkError,
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

    def feed_server(data: bytes) -> None:
        for i in range(0, len(data), chunk):
            for ev in server.feed(data[i : i + chunk]):
                seen.append(ev)
                if isinstance(ev, LinkRequest):
                    caps = [VmcCap.DATA_COMPRESS_LZ4] if ev.mess.channel_type != 1 else []
                    for cev in client.feed(server.accept(key.public_der, caps)):
                        seen.append(cev)
                    for more in server.pending_events():
                        seen.append(more)
                elif isinstance(ev, TicketReceived):
                    code = verify_ticket(key, ev.ticket, password)
                    for cev in client.feed(server.result(code) + b"\x67\x00"):
                        seen.append(cev)

    feed_server(client.initiate())
    feed_server(client.data_to_send())
    return server, seen


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


def test_key_pool_never_reuses() -> None:
    pool = KeyPool(2)
    assert pool.refill() == 2
    keys = {pool.take().public_der for _ in range(3)}  # the third is made on demand
    assert len(keys) == 3 and all(len(k) == 162 for k in keys)
