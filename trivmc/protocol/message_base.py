"""What every message codec shares: the `Body` type and the fixed-layout base.

`unpack_fixed` raises `TruncatedMessage` on a body shorter than the layout and ignores
trailing bytes, as spice-server does.
"""

from __future__ import annotations

import struct
from dataclasses import fields
from typing import ClassVar, Self

from .errors import TruncatedMessage

#: A message body: decoders take any of these (a view is not copied).
Body = bytes | bytearray | memoryview


def unpack_fixed(fmt: struct.Struct, body: Body, name: str) -> tuple[int, ...]:
    """The fields of `fmt` at the start of `body`; TruncatedMessage (naming the message
    `name`) when it is shorter."""
    if len(body) < fmt.size:
        raise TruncatedMessage(f"{name}: body of {len(body)} bytes, need {fmt.size}")
    return fmt.unpack_from(body, 0)


class FixedLayout:
    """A message whose body is exactly one struct of its dataclass fields, in order."""

    __slots__ = ()
    _S: ClassVar[struct.Struct]

    def encode(self) -> bytes:
        """The fields packed in order."""
        return self._S.pack(*(getattr(self, f.name) for f in fields(self)))  # type: ignore[arg-type]

    @classmethod
    def decode(cls, body: Body) -> Self:
        """Decode the fields (trailing bytes ignored); raises `TruncatedMessage` when short."""
        return cls(*unpack_fixed(cls._S, body, cls.__name__))
