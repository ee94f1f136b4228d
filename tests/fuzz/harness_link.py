"""Link harness: `ServerLink` and `ClientLink` fed arbitrary peer bytes in arbitrary
chunks, and the link codecs `LinkHeader`/`LinkMess`/`LinkReply.decode`.

Input: u8 target (server, client, codecs), then the target's parameters, then the
peer's bytes. Asserted:

- neither machine raises on any input; the server's answer methods raise
  `RuntimeError` outside their state; the codecs raise only `ProtocolError`;
- the events do not depend on the chunking (the same bytes fed whole give the same
  events, state and trailing bytes); at most one failure, and it is the last event;
- the server refuses bad magic, a major version other than 2 and a size outside
  18..4096 with that code, and hands over exactly the bytes that follow the ticket;
- every reply it writes decodes back to what it stated; a `LinkFailed` carries the
  error reply or the result for its code;
- the client sends the mechanism word (when both sides select) and a 128-byte ticket
  only after the OK reply, and hands over exactly the bytes after the result;
- whatever a codec decodes re-encodes to something that decodes to the same value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from trivmc.protocol import (
    LINK_HEADER_SIZE,
    SERVER_COMMON_CAPS,
    TICKET_SIZE,
    ChannelType,
    ClientLink,
    CommonCap,
    Linked,
    LinkError,
    LinkEvent,
    LinkFailed,
    LinkHeader,
    LinkKey,
    LinkMess,
    LinkReply,
    LinkReplyReceived,
    LinkRequest,
    ProtocolError,
    ServerLink,
    TicketReceived,
    VmcCap,
    caps_to_words,
    encode_reply,
    encode_result,
    error_reply,
    verify_ticket,
)

from .fuzzdata import FuzzInput, FuzzOutput, split
from .fuzzkeys import PRIVATE_DER, TICKET_EMPTY, TICKET_SECRET

MAX_LEN = 4096
MAX_PIECES = 64  # the rest of the stream goes in the last piece

KEY = LinkKey.from_trusted_der(PRIVATE_DER)
SERVER, CLIENT, CODECS = range(3)
COMMON_VARIANTS: tuple[tuple[int, ...], ...] = (
    tuple(SERVER_COMMON_CAPS),
    (CommonCap.AUTH_SPICE, CommonCap.MINI_HEADER),  # no AUTH_SELECTION
    (CommonCap.PROTOCOL_AUTH_SELECTION, CommonCap.AUTH_SPICE),  # no mini header
    (),
)
CHANNEL_CAP_VARIANTS: tuple[tuple[int, ...], ...] = ((), (VmcCap.DATA_COMPRESS_LZ4,), (0, 1, 2, 3))
REFUSALS = (
    LinkError.CHANNEL_NOT_AVAILABLE,
    LinkError.NEED_SECURED,
    LinkError.NEED_UNSECURED,
    LinkError.PERMISSION_DENIED,
)
CHANNEL_TYPES = (ChannelType.MAIN, ChannelType.USBREDIR, ChannelType.PORT, ChannelType.WEBDAV)
PASSWORDS: tuple[str | None, ...] = (None, "secret", "")
# how the server harness answers a ticket
RESULT_OK, RESULT_DENIED, RESULT_VERIFY_OPEN, RESULT_VERIFY_SECRET = range(4)


def fuzz_one(data: bytes) -> None:
    inp = FuzzInput(data)
    target = inp.u8() % 3
    if target == SERVER:
        _server(inp)
    elif target == CLIENT:
        _client(inp)
    else:
        _codecs(inp.rest())


# ---- server ------------------------------------------------------------------------


class _ServerPlan:
    """How the harness answers the server machine's events."""

    def __init__(self, inp: FuzzInput) -> None:
        flags = inp.u8()
        self.accept = not flags & 1
        self.refusal = REFUSALS[(flags >> 1) & 3]
        self.result = (flags >> 3) & 3
        self.channel_caps = CHANNEL_CAP_VARIANTS[(flags >> 5) % 3]
        self.common = COMMON_VARIANTS[inp.u8() % len(COMMON_VARIANTS)]
        self._verified: dict[bytes, LinkError] = {}

    def answer_ticket(self, ticket: bytes) -> LinkError:
        if self.result == RESULT_OK:
            return LinkError.OK
        if self.result == RESULT_DENIED:
            return LinkError.PERMISSION_DENIED
        if ticket not in self._verified:  # decryption is slow: once per distinct ticket
            password = None if self.result == RESULT_VERIFY_OPEN else "secret"
            code = verify_ticket(KEY, ticket, password)
            assert code in (LinkError.OK, LinkError.PERMISSION_DENIED), code
            self._verified[ticket] = code
        return self._verified[ticket]


def _drive_server(plan: _ServerPlan, pieces: Sequence[bytes]) -> tuple[ServerLink, list[object]]:
    server = ServerLink(plan.common)
    log: list[object] = []
    for piece in pieces:
        queue: list[LinkEvent] = server.feed(piece)
        while queue:
            ev = queue.pop(0)
            log.append(ev)
            if isinstance(ev, LinkRequest):
                assert server.mess == ev.mess
                assert LinkMess.decode(ev.mess.encode()) == ev.mess
                if plan.accept:
                    out = server.accept(KEY.public_der, plan.channel_caps)
                    reply = LinkReply.decode(out[LINK_HEADER_SIZE:])
                    assert LinkHeader.decode(out).size == len(out) - LINK_HEADER_SIZE
                    assert reply.error == LinkError.OK and reply.pub_key == KEY.public_der
                    queue += server.feed(b"")  # what came before accept()
                else:
                    assert server.refuse(plan.refusal) == error_reply(plan.refusal)
            elif isinstance(ev, TicketReceived):
                assert len(ev.ticket) == TICKET_SIZE
                code = plan.answer_ticket(ev.ticket)
                assert server.result(code) == encode_result(code)
            elif isinstance(ev, LinkFailed):
                assert ev.data in (error_reply(ev.code), encode_result(ev.code)), ev
            else:
                raise AssertionError(f"server machine emitted {ev!r}")
    state = (server.done, server.trailing, server.mini_header, server.peer_lz4)
    log.append(state)
    return server, log


def _server(inp: FuzzInput) -> None:
    plan = _ServerPlan(inp)
    cuts = inp.cuts()
    data = inp.rest()
    server, log = _drive_server(plan, split(data, cuts, MAX_PIECES))
    _, whole = _drive_server(plan, [data] if data else [])
    assert log == whole, (log, whole)
    events = log[:-1]
    kinds = [type(e) for e in events]
    assert kinds.count(LinkRequest) <= 1 and kinds.count(TicketReceived) <= 1
    assert kinds.count(LinkFailed) <= 1 and (LinkFailed not in kinds or kinds[-1] is LinkFailed)
    if kinds.count(TicketReceived):
        assert kinds.index(LinkRequest) < kinds.index(TicketReceived) and plan.accept
    answers: list[Callable[[], bytes]] = [
        lambda: server.accept(KEY.public_der),
        lambda: server.refuse(LinkError.ERROR),
        lambda: server.result(LinkError.OK),
    ]
    for method in answers:
        try:
            method()
        except RuntimeError:
            pass
        else:
            raise AssertionError("an answer method worked outside its state")
    _check_server_rules(data, events, server)


def _check_server_rules(data: bytes, events: list[object], server: ServerLink) -> None:
    """The checks of spec 1.8 that a few bytes decide, and the trailing bytes."""
    failed = next((e for e in events if isinstance(e, LinkFailed)), None)
    if len(data) >= 4 and data[:4] != b"REDQ":
        assert failed is not None and failed.code == LinkError.INVALID_MAGIC and len(events) == 1
        return
    if len(data) < LINK_HEADER_SIZE:
        assert not events
        return
    header = LinkHeader.decode(data)
    if header.major != 2:
        assert failed is not None and failed.code == LinkError.VERSION_MISMATCH
        return
    if not 18 <= header.size <= 4096:
        assert failed is not None and failed.code == LinkError.INVALID_DATA
        return
    if server.done:
        mechanism = 4 if server.expects_mechanism else 0
        end = LINK_HEADER_SIZE + header.size + mechanism + TICKET_SIZE
        assert server.trailing == data[end:]


# ---- client ------------------------------------------------------------------------


class _ClientPlan:
    def __init__(self, inp: FuzzInput) -> None:
        flags = inp.u8()
        self.channel_type = CHANNEL_TYPES[flags & 3]
        self.channel_caps = CHANNEL_CAP_VARIANTS[(flags >> 2) % 3]
        self.common = COMMON_VARIANTS[(flags >> 4) & 3]
        self.password = PASSWORDS[(flags >> 6) % 3]
        self.connection_id = inp.u32()

    def machine(self) -> ClientLink:
        return ClientLink(
            self.connection_id,
            self.channel_type,
            0,
            self.channel_caps,
            self.password,
            common_caps=self.common,
        )


def _drive_client(plan: _ClientPlan, pieces: Sequence[bytes]) -> tuple[ClientLink, list[object]]:
    client = plan.machine()
    hello = client.initiate()
    assert LinkMess.decode(hello[LINK_HEADER_SIZE:]) == client.mess
    log: list[object] = []
    for piece in pieces:
        for ev in client.feed(piece):
            if isinstance(ev, LinkReplyReceived):
                both = ev.reply.has_common(CommonCap.PROTOCOL_AUTH_SELECTION) and (
                    client.mess.has_common(CommonCap.PROTOCOL_AUTH_SELECTION)
                )
                assert len(ev.data) == TICKET_SIZE + (4 if both else 0), len(ev.data)
                assert ev.data[:4] == b"\x01\x00\x00\x00" or not both
                # the ticket is OAEP-randomised: log what is deterministic
                log += [LinkReplyReceived, ev.reply, len(ev.data)]
                continue
            if isinstance(ev, Linked):
                assert client.done and ev.mini_header == client.mini_header
                assert ev.peer_lz4 == client.peer_lz4
            elif isinstance(ev, LinkFailed):
                assert ev.data == b"", "the client sends nothing on a failure"
            else:
                raise AssertionError(f"client machine emitted {ev!r}")
            log.append(ev)
    log.append((client.done, client.trailing))
    return client, log


def _client(inp: FuzzInput) -> None:
    plan = _ClientPlan(inp)
    cuts = inp.cuts()
    data = inp.rest()
    client, log = _drive_client(plan, split(data, cuts, MAX_PIECES))
    _, whole = _drive_client(plan, [data] if data else [])
    assert log == whole, (log, whole)
    kinds = [e if e is LinkReplyReceived else type(e) for e in log[:-1]]
    kinds = [k for k in kinds if k in (LinkReplyReceived, Linked, LinkFailed)]
    assert kinds.count(LinkReplyReceived) <= 1
    assert kinds.count(Linked) + kinds.count(LinkFailed) <= 1
    assert not kinds or kinds[-1] in (Linked, LinkFailed, LinkReplyReceived)
    if client.done:
        size = LinkHeader.decode(data).size
        assert client.trailing == data[LINK_HEADER_SIZE + size + 4 :]


# ---- codecs ------------------------------------------------------------------------


def _codecs(data: bytes) -> None:
    for codec in (LinkHeader, LinkMess, LinkReply):
        try:
            value = codec.decode(data)
        except ProtocolError:
            continue
        assert codec.decode(value.encode()) == value, value


# ---- seeds -------------------------------------------------------------------------

H = bytes.fromhex
# spice-gtk 0.42's main and port link messages (spec section 9)
GTK_MAIN_LINK = H(
    "5245445102000000020000001a0000000000000001000100000001000000120000000d0000000f000000"
)
GTK_PORT_LINK = H("5245445102000000020000001600000068d61d330a000100000000000000120000000d000000")


def _server_seed(flags: int, common: int, cuts: Sequence[int], data: bytes) -> bytes:
    return FuzzOutput().u8(SERVER).u8(flags).u8(common).cuts(cuts).raw(data).bytes()


def _client_seed(flags: int, cuts: Sequence[int], data: bytes) -> bytes:
    return FuzzOutput().u8(CLIENT).u8(flags).u32(0).cuts(cuts).raw(data).bytes()


def seeds() -> dict[str, bytes]:
    mech = (1).to_bytes(4, "little")
    main_ok = GTK_MAIN_LINK + mech + TICKET_EMPTY
    port_ok = GTK_PORT_LINK + mech + TICKET_SECRET + H("650014000000") + b"hello from spice-gtk"
    server_words = tuple(caps_to_words(SERVER_COMMON_CAPS))
    lz4_word = tuple(caps_to_words([VmcCap.DATA_COMPRESS_LZ4]))
    reply = encode_reply(LinkReply(0, KEY.public_der, server_words, lz4_word))
    bad_key_reply = encode_reply(LinkReply(0, b"\x30" + bytes(161), server_words, ()))
    mini_word = tuple(caps_to_words([CommonCap.MINI_HEADER]))
    no_select = LinkMess(0, ChannelType.USBREDIR, 0, mini_word, lz4_word)
    no_select_wire = LinkHeader(len(no_select.encode())).encode() + no_select.encode()
    return {
        "server-gtk-main": _server_seed(0, 0, [], main_ok),
        "server-gtk-main-cut": _server_seed(0, 0, [1, 5, 17, 64], main_ok),
        "server-gtk-port-verify": _server_seed(RESULT_VERIFY_SECRET << 3, 0, [40], port_ok),
        "server-gtk-main-verify": _server_seed(RESULT_VERIFY_OPEN << 3, 0, [200], main_ok),
        "server-refuse": _server_seed(1 | 2 << 1, 0, [], GTK_PORT_LINK),
        "server-no-selection": _server_seed(0, 1, [3], no_select_wire + TICKET_EMPTY + b"tail"),
        "server-bad-magic": _server_seed(0, 0, [], b"GET / HTTP/1.1\r\n"),
        "server-bad-version": _server_seed(0, 0, [], H("52454451030000000200000000000000")),
        "server-bad-size": _server_seed(0, 0, [], H("52454451020000000200000088130000")),
        "client-linked": _client_seed(2, [7, 100], reply + encode_result(LinkError.OK) + b"x"),
        "client-denied": _client_seed(
            0x41, [], reply + encode_result(LinkError.PERMISSION_DENIED)
        ),
        "client-error-reply": _client_seed(0, [], error_reply(LinkError.CHANNEL_NOT_AVAILABLE)),
        # a bug the fuzzer found: an OK reply with a bad key left bytes to send
        "regress-client-bad-key": _client_seed(0, [], bad_key_reply),
        "codec-main-mess": FuzzOutput().u8(CODECS).raw(GTK_MAIN_LINK[16:]).bytes(),
        "codec-reply": FuzzOutput().u8(CODECS).raw(reply[16:]).bytes(),
        "codec-header": FuzzOutput().u8(CODECS).raw(GTK_PORT_LINK[:16]).bytes(),
    }
