"""The QMP wire layer: JSON values split from a byte stream with or without newlines,
in any chunking; bad input named, not fatal; an oversized value ends the stream."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trivmc.control.wire import BadInput, JsonStream, Value, ValueTooLarge, event, greeting

COMMANDS = [
    {"execute": "qmp_capabilities"},
    {"execute": "set_password", "arguments": {"protocol": "spice", "password": 'a"}{\\'}},
    {"execute": "query-spice", "id": {"a": [1, {"b": "]"}]}},
]


def values(items: list[Value | BadInput]) -> list[object]:
    return [i.value for i in items if isinstance(i, Value)]


def test_values_without_newlines_as_qemu_qmp_sends_them() -> None:
    stream = JsonStream()
    data = b"".join(json.dumps(c).encode() for c in COMMANDS)
    assert values(stream.feed(data)) == COMMANDS


@given(st.lists(st.integers(1, 40), min_size=1, max_size=30), st.sampled_from(["", "\n", " \r\n"]))
def test_any_chunking_gives_the_same_values(cuts: list[int], sep: str) -> None:
    data = sep.join(json.dumps(c) for c in COMMANDS).encode()
    stream = JsonStream()
    out: list[object] = []
    pos = 0
    for cut in cuts:
        out += values(stream.feed(data[pos : pos + cut]))
        pos += cut
    out += values(stream.feed(data[pos:] + b"\n"))
    assert out == COMMANDS


def test_bad_input_is_reported_and_the_stream_goes_on() -> None:
    stream = JsonStream()
    items = stream.feed(b'{bad} ] {"execute": "x"} 5 "s"\n')
    assert isinstance(items[0], BadInput) and "JSON parse error" in items[0].desc
    assert isinstance(items[1], BadInput) and "stray ']'" in items[1].desc
    assert values(items) == [{"execute": "x"}, 5, "s"]


def test_a_value_past_the_bound_ends_the_stream() -> None:
    stream = JsonStream(max_value=1000)
    stream.feed(b'{"execute": "x", "arguments": {"p": "')
    with pytest.raises(ValueTooLarge):
        stream.feed(b"a" * 2000)


def test_scanned_bytes_are_not_kept() -> None:
    stream = JsonStream()
    for _ in range(1000):
        stream.feed(b'{"execute": "query-spice"}\n')
    assert len(stream._buf) == 0


def test_greeting_and_event_shapes() -> None:
    g = greeting((0, 1, 0), "0.1.0")
    assert g["QMP"]["version"]["qemu"] == {"major": 0, "minor": 1, "micro": 0}
    assert g["QMP"]["capabilities"] == []
    e = event("SPICE_CONNECTED", {"a": 1}, now=12.5)
    assert e == {"timestamp": {"seconds": 12, "microseconds": 500000}, "event": "SPICE_CONNECTED",
                 "data": {"a": 1}}  # fmt: skip
