"""The distinct-context sketch, pure: the register rule, the dense packing, parsing."""

from __future__ import annotations

import contextlib
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flagwire.core.sketch import (
    DENSE_BYTES,
    MAX_RANK,
    MAX_SPARSE,
    REGISTERS,
    Registers,
    dense_bytes,
    parse_sketch,
    register_of,
    sketch_json,
    unpack_dense,
)


def _register_by_the_book(key: str) -> tuple[int, int]:
    """Redis's hllPatLen, written out: low 14 bits the index, then count to the first 1."""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    index, rest = h % REGISTERS, h >> 14
    rank = 1
    while rank <= 50 and not rest & 1:
        rank += 1
        rest >>= 1
    return index, rank


# The vectors docs/protocol.md gives for other languages' clients.
VECTORS = {"user-1": (1458, 5), "user-2": (11435, 1), "ü": (5924, 2), "": (7188, 5)}


@pytest.mark.parametrize(("key", "expected"), VECTORS.items())
def test_published_vectors(key: str, expected: tuple[int, int]) -> None:
    assert register_of(key) == expected == _register_by_the_book(key)


@given(st.text(max_size=60))
def test_register_is_redis_rule_over_sha256(key: str) -> None:
    assert register_of(key) == _register_by_the_book(key)


def test_rank_of_all_zero_rest_is_the_maximum() -> None:
    # Found by search would take forever; the rule itself: rest 0 means rank 51.
    rest = 0 | 1 << 50
    assert (rest & -rest).bit_length() == MAX_RANK


@settings(max_examples=50)
@given(st.dictionaries(st.integers(0, REGISTERS - 1), st.integers(0, 63), max_size=300))
def test_dense_packing_round_trips(set_: dict[int, int]) -> None:
    registers = bytearray(REGISTERS)
    for i, r in set_.items():
        registers[i] = r
    packed = dense_bytes(registers)
    assert len(packed) == DENSE_BYTES
    assert unpack_dense(packed) == registers


def test_dense_layout_is_six_bits_little_endian() -> None:
    registers = bytearray(REGISTERS)
    registers[0], registers[1], registers[REGISTERS - 1] = 1, 63, 5
    packed = dense_bytes(registers)
    assert packed[0] == 0b1100_0001  # register 0 in bits 0-5, register 1 from bit 6
    assert packed[1] == 0b0000_1111
    assert packed[-1] == 5 << 2


def test_registers_go_dense_past_the_sparse_limit_and_keep_every_register() -> None:
    regs = Registers()
    expected: dict[int, int] = {}
    for i in range(20_000):
        index, rank = register_of(f"u{i}")
        regs.add(index, rank)
        expected[index] = max(expected.get(index, 0), rank)
        if i == 100:
            assert isinstance(regs.sketch(), tuple)
            assert regs.nbytes == 64 * len(regs)
    assert len(expected) > MAX_SPARSE
    assert isinstance(regs.sketch(), bytes)
    assert regs.nbytes == REGISTERS
    assert regs.pairs() == sorted(expected.items())
    assert len(regs) == len(expected)


def test_merge_takes_the_larger_register_sparse_and_dense() -> None:
    a, b = Registers(), Registers()
    for i in range(3_000):
        a.add_key(f"a{i}")
    for i in range(100):
        b.add_key(f"b{i}")
    union = Registers()
    for i in range(3_000):
        union.add_key(f"a{i}")
    for i in range(100):
        union.add_key(f"b{i}")
    merged = Registers()
    merged.merge(b.sketch())
    merged.merge(a.sketch())  # dense into sparse
    assert merged.pairs() == union.pairs()
    again = Registers()
    again.merge(a.sketch())
    again.merge(b.sketch())  # sparse into dense
    assert again.pairs() == union.pairs()


@given(
    st.dictionaries(st.integers(0, REGISTERS - 1), st.integers(1, MAX_RANK), max_size=MAX_SPARSE)
)
def test_sparse_sketch_json_round_trips(regs: dict[int, int]) -> None:
    r = Registers()
    for i, rank in regs.items():
        r.add(i, rank)
    sketch = r.sketch()
    assert isinstance(sketch, tuple)
    assert parse_sketch(sketch_json(sketch)) == sketch
    assert {v >> 6: v & 63 for v in sketch} == regs
    assert list(sketch) == sorted(sketch)


json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)


@given(st.lists(json_scalars, max_size=12) | json_scalars)
def test_parsing_anything_raises_only_value_error(value: object) -> None:
    with contextlib.suppress(ValueError):
        parse_sketch(value)
