"""The guest's name and UUID (MAIN_NAME, MAIN_UUID) after MAIN_INIT, to clients with
NAME_AND_UUID only."""

from __future__ import annotations

from uuid import UUID

import pytest
import trio

from trivmc.backends import EchoBackend
from trivmc.client import connect
from trivmc.client.address import parse_uri
from trivmc.client.connection import MessageConnection, link_channel
from trivmc.protocol import MainCap, MainChannelsList, MainName, MainUuid, MsgcMain, MsgMain
from trivmc.server import Server, ServerConfig

VM_UUID = UUID("6f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9")


def server_with(name: str | None, uuid: UUID | None) -> Server:
    server = Server(ServerConfig(listen=[("127.0.0.1", 0)], key_pool_size=2, name=name, uuid=uuid))
    server.add_port("org.test.0", EchoBackend())
    return server


async def main_messages(port: int, caps: list[int]) -> list[tuple[int, bytes]]:
    """Link a main channel with `caps`, send ATTACH_CHANNELS, and return every message
    up to and including CHANNELS_LIST."""
    linked = await link_channel(parse_uri(f"spice://127.0.0.1:{port}"), 0, 1, 0, caps, None)
    conn = MessageConnection(linked)
    out: list[tuple[int, bytes]] = []
    async with linked.stream:
        await conn.send(MsgcMain.ATTACH_CHANNELS)
        with trio.fail_after(10):
            while not out or out[-1][0] != MsgMain.CHANNELS_LIST:
                msg = await conn.receive()
                assert msg is not None, "the server closed the main channel"
                out.append((msg.type, bytes(msg.body)))
    return out


async def test_name_and_uuid_right_after_init_to_a_client_with_the_cap() -> None:
    async with server_with("guest one", VM_UUID) as addrs:
        port = addrs[0][1]  # type: ignore[index]
        msgs = await main_messages(port, [MainCap.NAME_AND_UUID])
        bare = await main_messages(port, [])
    assert [t for t, _ in msgs] == [
        MsgMain.INIT,
        MsgMain.NAME,
        MsgMain.UUID,
        MsgMain.CHANNELS_LIST,
    ]
    assert MainName.decode(msgs[1][1]) == MainName(b"guest one")
    assert msgs[1][1].endswith(b"guest one\0")
    assert MainUuid.decode(msgs[2][1]).as_uuid() == VM_UUID
    assert MainChannelsList.decode(msgs[3][1]).channels == ((10, 0),)
    # a client without NAME_AND_UUID gets neither (as spice-server)
    assert [t for t, _ in bare] == [MsgMain.INIT, MsgMain.CHANNELS_LIST]


async def test_each_only_when_set() -> None:
    for name, uuid, expected in (
        (None, None, [MsgMain.INIT, MsgMain.CHANNELS_LIST]),
        ("only-name", None, [MsgMain.INIT, MsgMain.NAME, MsgMain.CHANNELS_LIST]),
        (None, VM_UUID, [MsgMain.INIT, MsgMain.UUID, MsgMain.CHANNELS_LIST]),
    ):
        async with server_with(name, uuid) as addrs:
            msgs = await main_messages(addrs[0][1], [MainCap.NAME_AND_UUID])  # type: ignore[index]
        assert [t for t, _ in msgs] == expected, (name, uuid)


async def test_the_trivmc_client_exposes_them() -> None:
    async with server_with("vm-ü", VM_UUID) as addrs:
        async with connect(f"spice://127.0.0.1:{addrs[0][1]}") as session:  # type: ignore[index]
            assert (session.name, session.uuid) == ("vm-ü", VM_UUID)
    async with server_with(None, None) as addrs:
        async with connect(f"spice://127.0.0.1:{addrs[0][1]}") as session:  # type: ignore[index]
            assert (session.name, session.uuid) == (None, None)


def test_config_refuses_a_name_with_nul() -> None:
    with pytest.raises(ValueError, match="NUL"):
        ServerConfig(name="a\0b")
    with pytest.raises(ValueError, match=r"uuid\.UUID"):
        ServerConfig(uuid="6f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9")  # type: ignore[arg-type]
