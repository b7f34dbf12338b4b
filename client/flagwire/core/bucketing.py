"""Deterministic percentage bucketing, identical in every flagwire client.

A context lands in bucket ``b`` in ``[0, 100000)`` (thousandths of a
percent) computed from the flag's salt and the value of the rollout's
``bucket_by`` attribute::

    text = f"{salt}.{value}"                         # value as its bucket text
    digest = sha1(text.encode("utf-8")).digest()
    b = int.from_bytes(digest[:8], "big") % 100000

A rollout walks its slots in order with a running total of weights and
serves the first slot whose cumulative weight is greater than ``b``.  Since
slot boundaries only move outward when the first slot grows, raising a
rollout from 10% to 50% keeps every context that was in.  The algorithm and
test vectors (``tests/vectors/bucketing.json``) are in ``docs/evaluation.md``
so that a client in another language can reproduce it bit for bit.

The 64-bit prefix modulo 100000 has a bias of under 1e-14: irrelevant.
"""

from __future__ import annotations

import hashlib
from typing import Final

from flagwire.core.limits import BUCKETS

__all__ = ["bucket", "bucket_text"]

# Numbers beyond 2**53 are refused: many languages parse JSON numbers as
# doubles, where such integers are not exact and print differently ("1e+21").
_MAX_EXACT: Final = 2**53


def bucket_text(value: object) -> str | None:
    """The text a bucket_by value hashes as, or None if it cannot be bucketed.

    Strings hash as themselves; integers as their decimal text; floats with
    an integral value (``3.0``) as the integer's text (``"3"``), so 3 and
    3.0 share a bucket as they do in JSON.  Numbers beyond ±2**53, booleans,
    fractional floats, None, arrays and objects cannot be bucketed: the
    evaluator then buckets by the context ``key`` instead.
    """
    cls = value.__class__
    if cls is str:
        return value  # type: ignore[return-value]
    if cls is int:
        n: int = value  # type: ignore[assignment]
        return str(n) if -_MAX_EXACT <= n <= _MAX_EXACT else None
    if cls is float:
        f: float = value  # type: ignore[assignment]
        if f.is_integer() and -_MAX_EXACT <= f <= _MAX_EXACT:
            return str(int(f))
        return None
    if isinstance(value, str) and not isinstance(value, bool):
        return str.__str__(value)  # str subclasses (StrEnum) hash as their plain text
    return None


def bucket(salt: str, value: object) -> int:
    """Return the bucket in ``[0, 100000)`` of ``value`` for a flag salted ``salt``.

    Args:
        salt: the flag's ``salt`` (its key unless set).
        value: a string or a number (see :func:`bucket_text`).

    Raises:
        TypeError: ``value`` cannot be bucketed (a boolean, fraction, None...).
    """
    text = bucket_text(value)
    if text is None:
        raise TypeError(f"cannot bucket a {type(value).__name__} value")
    # "surrogatepass" keeps a lone surrogate (impossible in JSON, possible in
    # a Python str) from raising inside evaluation.
    data = f"{salt}.{text}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.sha1(data, usedforsecurity=False).digest()[:8], "big") % BUCKETS
