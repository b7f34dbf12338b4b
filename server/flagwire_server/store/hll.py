"""Client sketches as Redis HyperLogLog strings, for ``PFMERGE``.

A sketch's registers are in Redis's own layout (:mod:`flagwire.core.sketch`),
so a Redis HyperLogLog is a 16-byte header and the registers, dense (the
sketch's bytes as they came) or sparse (run-length opcodes, a few bytes for
a few registers).  Redis's encoding is documented in its ``hyperloglog.c``
and has not changed since Redis 2.8.9 (Valkey shares it);
``tests/test_sketch_redis.py`` checks it against the real server: a sketch
built here counts, merges and converts exactly as ``PFADD`` would have
built it.
"""

from __future__ import annotations

from itertools import repeat
from operator import and_, rshift
from typing import Final

from flagwire.core.sketch import REGISTERS, Sketch, dense_bytes

__all__ = ["DENSE_HEADER", "SPARSE_HEADER", "redis_hll"]

# "HYLL", the encoding (0 dense, 1 sparse), 3 unused bytes, then the cached cardinality,
# 8 bytes little-endian whose top bit set means "not computed".
DENSE_HEADER: Final = b"HYLL\x00\x00\x00\x00" + b"\x00" * 7 + b"\x80"
SPARSE_HEADER: Final = b"HYLL\x01\x00\x00\x00" + b"\x00" * 7 + b"\x80"

#: The largest rank a sparse VAL opcode holds (5 bits).
_SPARSE_MAX_RANK: Final = 32
#: Registers past which the dense form is built instead: the sparse one is built by a
#: Python loop per register, the dense one at C speed (about 2 ms), and Redis makes a
#: key dense past 3,000 bytes of sparse form anyway.
_SPARSE_MAX: Final = 1_000


def redis_hll(sketch: Sketch) -> bytes:
    """The Redis HyperLogLog of a sketch (a sparse one with one entry per register, by
    ascending index, as :meth:`flagwire.core.sketch.Registers.sketch` makes them)."""
    if isinstance(sketch, bytes):
        return DENSE_HEADER + sketch
    entries = sketch
    if len(entries) > _SPARSE_MAX or (entries and max(e & 63 for e in entries) > _SPARSE_MAX_RANK):
        rank_of = dict(
            zip(map(rshift, entries, repeat(6)), map(and_, entries, repeat(63)), strict=False)
        )
        return DENSE_HEADER + dense_bytes(bytes(map(rank_of.get, range(REGISTERS), repeat(0))))
    out = bytearray(SPARSE_HEADER)
    at = 0
    for e in entries:
        i, r = e >> 6, e & 63
        if not r:
            continue
        _zeros(out, i - at)
        out.append(0x80 | (r - 1) << 2)  # VAL: 1vvvvvxx, value v + 1, run of xx + 1
        at = i + 1
    _zeros(out, REGISTERS - at)
    return bytes(out)


def _zeros(out: bytearray, n: int) -> None:
    """Opcodes for a run of ``n`` zero registers: ZERO 00xxxxxx (up to 64), else XZERO
    01xxxxxx yyyyyyyy (up to 16,384)."""
    while n > 0:
        if n <= 64:
            out.append(n - 1)
            return
        run = min(n, REGISTERS)
        out += bytes((0x40 | (run - 1) >> 8, (run - 1) & 0xFF))
        n -= run
