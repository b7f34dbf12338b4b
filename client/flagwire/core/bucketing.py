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

Flags imported from LaunchDarkly (``"semantics": "launchdarkly"``) keep
LaunchDarkly's own assignment instead, so nobody changes variation on the
day of the move: :func:`launchdarkly_bucket` is a float in ``[0, 1]`` from
the first 15 hex digits of the SHA-1 of ``prefix.value``, where the prefix
is ``flagKey.salt`` (a flagwire ``salt`` of such a flag holds exactly that)
or the rollout's ``seed``.  Integers and strings can be bucketed there;
anything else lands in bucket 0.
"""

from __future__ import annotations

import hashlib
from typing import Final

from flagwire.core.limits import BUCKETS

__all__ = ["LD_SCALE", "bucket", "bucket_text", "launchdarkly_bucket", "launchdarkly_bucket_text"]

#: LaunchDarkly divides the 60-bit hash prefix by this (not 2**60), as a double.
LD_SCALE: Final = float(0xFFFFFFFFFFFFFFF)

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


def launchdarkly_bucket_text(value: object) -> str | None:
    """The text LaunchDarkly hashes for a bucket_by value, or None (then the bucket is 0).

    Strings as themselves and integers as decimal text; booleans, floats
    (even ``3.0``: LaunchDarkly's Python SDK, which the differential test
    runs, does not bucket them), None, arrays and objects cannot be bucketed.
    """
    cls = value.__class__
    if cls is str:
        return value  # type: ignore[return-value]
    if cls is int:
        return str(value)
    if isinstance(value, str | int) and not isinstance(value, bool):
        return str(value)  # subclasses as LaunchDarkly's SDK formats them
    return None


def launchdarkly_bucket(prefix: str, value: object) -> float:
    """LaunchDarkly's bucket of ``value`` in ``[0, 1]``, bit for bit.

    ``int(sha1(f"{prefix}.{text}").hexdigest()[:15], 16) / LD_SCALE`` in
    doubles; 0.0 for a value that cannot be bucketed.  A rollout then serves
    the first slot whose running total of ``weight / 100000.0`` (summed in
    doubles, in slot order) is greater than the bucket, else its last slot.

    Args:
        prefix: ``flagKey.salt`` with LaunchDarkly's key, or the rollout's seed as text.
        value: the bucket_by attribute's value.
    """
    text = launchdarkly_bucket_text(value)
    if text is None:
        return 0.0
    data = f"{prefix}.{text}".encode("utf-8", "surrogatepass")
    digest = hashlib.sha1(data, usedforsecurity=False).digest()
    # The first 15 hex digits are the top 60 bits of the first 8 bytes.
    return (int.from_bytes(digest[:8], "big") >> 4) / LD_SCALE
