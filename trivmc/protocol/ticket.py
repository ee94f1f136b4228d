"""The SPICE ticket: RSA-1024 link keys, OAEP(SHA-1) encrypt/decrypt of the 128-byte
ticket, and the password rules. (Pooling keys ahead of time is the server's business:
`trivmc.server.keypool`.)"""

from __future__ import annotations

import functools
import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .constants import MAX_PASSWORD_LENGTH, PUBKEY_SIZE, TICKET_SIZE, LinkError
from .errors import LinkProtocolError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

# cryptography (about 7 MiB of RSS) is imported by the first call that needs it, so a
# server that has linked nobody yet does not carry it (docs/limits.md, idle memory)


@functools.cache
def _oaep() -> padding.OAEP:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    return padding.OAEP(
        mgf=padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None
    )


@dataclass(frozen=True, slots=True)
class LinkKey:
    """One link's RSA key: the private half and the 162-byte DER public key."""

    private: rsa.RSAPrivateKey
    public_der: bytes

    @classmethod
    def from_private(cls, private: rsa.RSAPrivateKey) -> LinkKey:
        """The key pair of `private`; raises ValueError unless it is an RSA-1024 key."""
        from cryptography.hazmat.primitives import serialization

        der = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if len(der) != PUBKEY_SIZE:
            raise ValueError(f"not an RSA-1024 key: public DER of {len(der)} bytes")
        return cls(private, der)

    @classmethod
    def from_trusted_der(cls, der: bytes) -> LinkKey:
        """A key from the PKCS#8 DER that trivmc's own key generator produced.

        The expensive RSA consistency check is skipped (microseconds instead of
        milliseconds): only pass bytes from a generator you run yourself."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        private = serialization.load_der_private_key(
            der, None, unsafe_skip_rsa_key_validation=True
        )
        if not isinstance(private, rsa.RSAPrivateKey):
            raise ValueError("not an RSA private key")
        return cls.from_private(private)

    def warm(self) -> None:
        """Do one private operation now, so the link's ticket decryption does not pay
        for setting up the key's arithmetic (about half of a first decryption)."""
        oaep = _oaep()
        self.private.decrypt(self.private.public_key().encrypt(b"\0", oaep), oaep)


def generate_key() -> LinkKey:
    """A fresh RSA-1024 key (e = 65537); costs ~10 ms of CPU: keep it off the link path
    (trivmc's server pools them: `trivmc.server.keypool.KeyPool`)."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    return LinkKey.from_private(rsa.generate_private_key(public_exponent=65537, key_size=1024))


def check_password(password: str | bytes | None) -> bytes | None:
    """Validate a server password (at most 60 bytes, no NUL); None disables ticketing."""
    if password is None:
        return None
    raw = password.encode() if isinstance(password, str) else bytes(password)
    if len(raw) > MAX_PASSWORD_LENGTH:
        raise ValueError(f"password longer than {MAX_PASSWORD_LENGTH} bytes")
    if b"\0" in raw:
        raise ValueError("password contains a NUL byte")
    return raw


def encrypt_ticket(public_der: bytes, password: str | bytes | None) -> bytes:
    """The client side: the 128-byte RSA-OAEP(SHA-1) of password + NUL under the
    server's key. `None` or empty sends the 1-byte plaintext NUL.

    Raise `ValueError` for a bad password (`check_password`) and `LinkProtocolError`
    (INVALID_DATA) when `public_der` is not an RSA-1024 public key.
    """
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    raw = check_password(password) or b""
    try:
        key = serialization.load_der_public_key(bytes(public_der))
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise LinkProtocolError(LinkError.INVALID_DATA, f"bad server public key: {e}") from e
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size != 8 * TICKET_SIZE:
        raise LinkProtocolError(LinkError.INVALID_DATA, "server public key is not RSA-1024")
    try:
        return key.encrypt(raw + b"\0", _oaep())
    except ValueError as e:  # pragma: no cover - RSA-1024 always fits 61 bytes
        raise LinkProtocolError(LinkError.INVALID_DATA, f"cannot encrypt ticket: {e}") from e


MAX_TICKET_SHIFT = 3


def _decrypt(key: LinkKey, ticket: bytes) -> bytes | None:
    """The OAEP plaintext, or None. spice-html5 (ticket.js) drops a ciphertext's leading
    zero bytes and pads zeros at the end instead (about one link in 256); such a ticket
    is tried again with up to 3 zeros put back, so those links are not refused."""
    oaep = _oaep()
    try:
        return key.private.decrypt(ticket, oaep)
    except ValueError:
        pass
    zeros = len(ticket) - len(ticket.rstrip(b"\0"))
    for shift in range(1, min(zeros, MAX_TICKET_SHIFT) + 1):
        try:
            return key.private.decrypt(bytes(shift) + ticket[:-shift], oaep)
        except ValueError:
            pass
    return None


def verify_ticket(
    key: LinkKey,
    ticket: bytes | bytearray | memoryview,
    password: str | bytes | None,
    *,
    expiry: float | None = None,
    now: float | None = None,
) -> LinkError:
    """Check an encrypted ticket as spice-server does; return OK or PERMISSION_DENIED.

    Decryption failure denies even with ticketing disabled (`password=None`) (a ticket
    shifted by spice-html5's leading-zero bug is repaired first); ticketing
    enabled with an empty password always denies; an `expiry` at or before `now` denies;
    otherwise the bytes before the first NUL are compared in constant time
    (`hmac.compare_digest`). Sans-IO: pass `now` (same clock as `expiry`) whenever
    `expiry` is set; an `expiry` without `now` raises `ValueError`.
    """
    if expiry is not None and now is None:
        raise ValueError("verify_ticket: expiry given without now")
    if isinstance(password, str):
        password = password.encode()
    if len(ticket) != TICKET_SIZE:
        return LinkError.PERMISSION_DENIED
    plain = _decrypt(key, bytes(ticket))
    if plain is None:
        return LinkError.PERMISSION_DENIED
    if password is None:
        return LinkError.OK
    if not password:
        return LinkError.PERMISSION_DENIED
    if expiry is not None and now is not None and now >= expiry:
        return LinkError.PERMISSION_DENIED
    given = plain.split(b"\0", 1)[0]
    return LinkError.OK if hmac.compare_digest(given, password) else LinkError.PERMISSION_DENIED
