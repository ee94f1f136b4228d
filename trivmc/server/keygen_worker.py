"""A key generator process: RSA-1024 link keys made outside the server's process.

The server runs one per usable core (`keys.py`). Each runs at the lowest CPU priority,
so it takes only CPU nothing else wants, and holds no lock the server's event loop
needs (a thread would share its GIL). Run as a script (`python keygen_worker.py`), it
imports only `cryptography`. Protocol on its pipes: once imported and niced, the worker
writes its ready record, a u16 zero; then the server writes a decimal count and a
newline, and the worker answers with that many keys, each a u16 big-endian length and
the key's PKCS#8 DER. It exits at the end of its input.
"""

import contextlib
import os
import struct
import sys

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

MAX_BATCH = 1024


def key_der() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def main() -> int:
    with contextlib.suppress(OSError):
        os.nice(19)  # keys are made ahead of time: use only the CPU nobody else wants
    out = sys.stdout.buffer
    out.write(struct.pack(">H", 0))  # ready
    out.flush()
    for line in sys.stdin.buffer:
        count = min(int(line), MAX_BATCH)
        for _ in range(count):
            der = key_der()
            out.write(struct.pack(">H", len(der)) + der)
            out.flush()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (KeyboardInterrupt, BrokenPipeError):
        sys.exit(0)
