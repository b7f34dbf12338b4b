"""Distinct contexts as HyperLogLog registers: the sketch a summary carries.

Why registers: a count of distinct contexts must merge across clients,
server processes and days without counting twice, whatever the number of
contexts.  HyperLogLog registers merge by taking the larger of each pair,
so a client can send the registers of the contexts it saw in one interval,
and the server folds them into a day's key with Redis's ``PFMERGE``; the
estimate's standard error is 0.81% at any count.

The layout is Redis's own, so no translation is needed: 16,384 registers
(precision 14); a context key's 64-bit hash is the first 8 bytes of its
SHA-256 read big-endian; its low 14 bits choose the register, and one plus
the number of trailing zero bits of the other 50 (51 if all are zero) is
the rank the register keeps the largest of.  Any language can compute this
from the description; ``docs/protocol.md`` has test vectors.

On the wire a sketch is either *sparse*, a list of the non-zero registers
as integers ``index * 64 + rank`` (at most :data:`MAX_SPARSE`; in any order,
and where one register comes twice the larger rank counts), or *dense*, the
base64 of all 16,384 six-bit registers packed little-endian (register *i*
in bits 6i-6i+5), which is Redis's dense layout byte for byte.  One integer
per register, not a pair, because a server checks a hundred thousand
sketches a second: a list of integers in range is checked by three C calls.
Never a key, clear or hashed: a register says 14 bits of a hash and a rank.

Pure, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Final, TypeAlias

__all__ = [
    "DENSE_BYTES",
    "MAX_RANK",
    "MAX_SPARSE",
    "PRECISION",
    "REGISTERS",
    "Registers",
    "Sketch",
    "dense_bytes",
    "parse_sketch",
    "register_of",
    "sketch_json",
    "unpack_dense",
]

PRECISION: Final = 14
REGISTERS: Final = 1 << PRECISION
#: The largest rank: the 50 bits above the index all zero.
MAX_RANK: Final = 64 - PRECISION + 1
#: Bytes of the dense form (16,384 registers of 6 bits).
DENSE_BYTES: Final = REGISTERS * 6 // 8
#: Non-zero registers sent as a list; a sketch with more is sent dense (a list entry is
#: about 7 bytes of JSON, the dense form 16,384 characters: the two meet near 2,300).
MAX_SPARSE: Final = 2_048

#: A sketch as a summary holds it: sparse entries ``index << 6 | rank``, or the dense bytes.
Sketch: TypeAlias = tuple[int, ...] | bytes

#: Sparse entries are below this (a 14-bit index, a 6-bit rank).
_ENTRY_LIMIT: Final = REGISTERS << 6
_INT: Final = frozenset({int})

_INDEX_MASK: Final = REGISTERS - 1
_SENTINEL: Final = 1 << (64 - PRECISION)
_BITS6: Final = tuple(format(r, "06b") for r in range(64))


def register_of(key: str) -> tuple[int, int]:
    """The register and rank of one context key."""
    h = int.from_bytes(hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()[:8], "big")
    rest = (h >> PRECISION) | _SENTINEL
    return h & _INDEX_MASK, (rest & -rest).bit_length()


def dense_bytes(registers: bytes | bytearray) -> bytes:
    """Pack 16,384 one-byte registers into the 12,288-byte dense form."""
    # Register i at bit 6i of one little-endian integer: built from its binary digits,
    # highest register first (C-level joins; a Python loop per register is 5x slower).
    bits = "".join(map(_BITS6.__getitem__, reversed(registers)))
    return int(bits, 2).to_bytes(DENSE_BYTES, "little")


def unpack_dense(packed: bytes) -> bytearray:
    """The 16,384 one-byte registers of a dense form."""
    bits = format(int.from_bytes(packed, "little"), f"0{REGISTERS * 6}b")
    return bytearray(int(bits[i - 6 : i], 2) for i in range(len(bits), 0, -6))


class Registers:
    """Mutable registers of one flag variation: sparse while few are set, then dense.

    The client adds keys over one interval; the server merges sparse sketches of
    many clients between two flushes.  At most 16 KiB whatever is added.
    """

    __slots__ = ("_dense", "_sparse")

    def __init__(self) -> None:
        self._sparse: dict[int, int] | None = {}
        self._dense: bytearray | None = None

    def __len__(self) -> int:
        """Non-zero registers."""
        if self._sparse is not None:
            return len(self._sparse)
        assert self._dense is not None
        return REGISTERS - self._dense.count(0)

    @property
    def nbytes(self) -> int:
        """About the memory held: 64 bytes a register while sparse, then 16 KiB."""
        return 64 * len(self._sparse) if self._sparse is not None else REGISTERS

    def add(self, index: int, rank: int) -> None:
        self.merge((index << 6 | rank,))

    def add_key(self, key: str) -> None:
        self.add(*register_of(key))

    def merge(self, sketch: Sketch | list[int]) -> None:
        """Take the larger of each register of ``sketch`` (a dense one is unpacked,
        about 4 ms, so the server leaves those to Redis)."""
        if isinstance(sketch, bytes):
            if self._sparse is not None:
                self._densify()
            dense = self._dense
            assert dense is not None
            self._dense = bytearray(map(max, dense, unpack_dense(sketch)))
            return
        # One loop per form, no call per register: a server merges a hundred thousand small
        # sketches a second.
        sparse = self._sparse
        if sparse is not None:
            get = sparse.get
            for v in sketch:
                i, r = v >> 6, v & 63
                if get(i, 0) < r:
                    sparse[i] = r
            if len(sparse) > MAX_SPARSE:
                self._densify()
            return
        dense = self._dense
        assert dense is not None
        for v in sketch:
            i, r = v >> 6, v & 63
            if dense[i] < r:
                dense[i] = r

    def sketch(self) -> Sketch:
        """What a summary carries: sparse if at most :data:`MAX_SPARSE` are set."""
        if self._sparse is not None:
            return tuple(sorted(i << 6 | r for i, r in self._sparse.items()))
        assert self._dense is not None
        return dense_bytes(self._dense)

    def pairs(self) -> list[tuple[int, int]]:
        """The non-zero registers as ``(index, rank)``, by index."""
        if self._sparse is not None:
            return sorted(self._sparse.items())
        assert self._dense is not None
        return [(i, r) for i, r in enumerate(self._dense) if r]

    def _densify(self) -> None:
        dense = bytearray(REGISTERS)
        for i, r in (self._sparse or {}).items():
            dense[i] = r
        self._sparse, self._dense = None, dense


# --- the wire -----------------------------------------------------------------


def sketch_json(sketch: Sketch) -> list[int] | str:
    """The JSON form of a sketch: the sparse list, or the dense form in base64."""
    if isinstance(sketch, bytes):
        return base64.b64encode(sketch).decode("ascii")
    return list(sketch)


def parse_sketch(value: object) -> Sketch:
    """The sketch of a JSON value, checked at C speed where it can be (a server reads
    a thousand summaries a second).

    Raises:
        ValueError: what is wrong with it.
    """
    if type(value) is str:
        if len(value) != DENSE_BYTES * 4 // 3:
            raise ValueError(
                f"a dense sketch is {DENSE_BYTES * 4 // 3} base64 characters, not {len(value)}"
            )
        try:
            return base64.b64decode(value, validate=True)
        except binascii.Error:
            raise ValueError("a dense sketch must be base64") from None
    if type(value) is not list:
        raise ValueError("expected a list of index * 64 + rank, or a base64 string")
    if len(value) > MAX_SPARSE:
        raise ValueError(f"a sparse sketch holds at most {MAX_SPARSE} registers")
    if not _INT.issuperset(map(type, value)):
        raise ValueError("a sparse sketch holds integers only")
    if value and (min(value) < 0 or max(value) >= _ENTRY_LIMIT):
        raise ValueError(f"a sparse entry is index * 64 + rank, in 0..{_ENTRY_LIMIT - 1}")
    return tuple(value)
