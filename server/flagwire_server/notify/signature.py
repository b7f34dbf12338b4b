"""The ``Flagwire-Signature`` header: HMAC-SHA256 over a timestamp and the body.

Format (as Stripe's): ``t=<unix seconds>,v1=<hex HMAC-SHA256>``, where the
HMAC's key is the webhook's secret (its UTF-8 bytes, ``whsec_`` included) and
its message is ``<t>.`` followed by the raw request body.  The timestamp is
signed with the body, so a receiver that refuses timestamps older than a few
minutes refuses a replayed request; a new scheme would add ``v2=`` beside
``v1=`` and receivers ignore schemes they do not know.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Final

__all__ = [
    "HEADER",
    "SECRET_PREFIX",
    "TOLERANCE",
    "SignatureError",
    "new_secret",
    "sign",
    "verify",
]

HEADER: Final = "Flagwire-Signature"
SECRET_PREFIX: Final = "whsec_"
#: Seconds a receiver should accept a signature's timestamp either side of its clock.
TOLERANCE: Final = 300


class SignatureError(ValueError):
    """A signature header that is malformed, stale, or does not match the body."""


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` and 256 random bits (URL-safe base64)."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    message = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The header value for ``body`` sent at ``timestamp`` (unix seconds)."""
    return f"t={timestamp},v1={_mac(secret, timestamp, body)}"


def verify(
    secret: str, header: str, body: bytes, *, now: float, tolerance: float = TOLERANCE
) -> int:
    """Check a received header; returns its timestamp.

    Raises:
        SignatureError: no ``t=`` or ``v1=``, a timestamp more than ``tolerance``
            seconds from ``now``, or no ``v1=`` that matches.
    """
    parts = [p.partition("=") for p in header.split(",")]
    stamps = [v.strip() for k, _, v in parts if k.strip() == "t"]
    macs = [v.strip() for k, _, v in parts if k.strip() == "v1"]
    if len(stamps) != 1 or not stamps[0].isdigit() or not macs:
        raise SignatureError("expected t=<unix seconds>,v1=<hex>")
    timestamp = int(stamps[0])
    if abs(now - timestamp) > tolerance:
        raise SignatureError(f"timestamp {timestamp} is more than {tolerance:g} s from now")
    expected = _mac(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, m) for m in macs):
        raise SignatureError("no v1 signature matches the body")
    return timestamp
