"""Client sketches in a real Redis (or Valkey): the strings store/hll.py builds are
HyperLogLogs that Redis counts, merges and converts as its own."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
import redis

from flagwire.core.sketch import REGISTERS, Registers, dense_bytes
from flagwire_server.store.hll import DENSE_HEADER, redis_hll


@pytest.fixture
def r(redis_url: str, redis_prefix: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        for k in client.scan_iter(match=f"{redis_prefix}:*"):
            client.delete(k)
        client.close()


def _sketch(keys: range | list[str], prefix: str = "u") -> Registers:
    regs = Registers()
    for k in keys:
        regs.add_key(f"{prefix}{k}")
    return regs


def _entries(regs: Registers) -> tuple[int, ...]:
    return tuple(i << 6 | r for i, r in regs.pairs())


def _redis_registers(r: redis.Redis, key: str) -> bytes:
    """The dense registers Redis holds for ``key`` (merging an empty dense one in
    makes Redis convert it if it is sparse)."""
    tmp = key + ":dense"
    r.set(tmp + ":zero", DENSE_HEADER + bytes(REGISTERS * 6 // 8))
    r.pfmerge(tmp, key, tmp + ":zero")
    raw = r.get(tmp)
    assert raw is not None
    assert raw[4] == 0  # dense
    return bytes(raw[16:])


@pytest.mark.parametrize("n", [1, 10, 300, 2_000, 50_000])
def test_redis_counts_a_sketch_within_its_error(r: redis.Redis, redis_prefix: str, n: int) -> None:
    regs = _sketch(range(n))
    key = f"{redis_prefix}:hll"
    r.set(key, redis_hll(_entries(regs)))
    estimate = r.pfcount(key)
    assert abs(estimate - n) <= max(1, 0.03 * n), (estimate, n)


@pytest.mark.parametrize("n", [5, 300, 5_000])
def test_sparse_and_dense_forms_are_the_same_registers_to_redis(
    r: redis.Redis, redis_prefix: str, n: int
) -> None:
    regs = _sketch(range(n))
    ranks = bytearray(REGISTERS)
    for i, rank in regs.pairs():
        ranks[i] = rank
    ours = dense_bytes(ranks)
    r.set(f"{redis_prefix}:built", redis_hll(_entries(regs)))
    r.set(f"{redis_prefix}:dense", DENSE_HEADER + ours)
    assert _redis_registers(r, f"{redis_prefix}:built") == ours
    assert _redis_registers(r, f"{redis_prefix}:dense") == ours
    assert r.pfcount(f"{redis_prefix}:built") == r.pfcount(f"{redis_prefix}:dense")


def test_high_ranks_and_edge_registers_survive_the_sparse_limit(
    r: redis.Redis, redis_prefix: str
) -> None:
    """A rank over 32 cannot be sparse (5-bit values): the string is dense then."""
    pairs = [(0, 1), (1, 33), (REGISTERS - 1, 51)]
    built = redis_hll(tuple(i << 6 | r for i, r in pairs))
    assert built[4] == 0
    ranks = bytearray(REGISTERS)
    for i, rank in pairs:
        ranks[i] = rank
    r.set(f"{redis_prefix}:x", built)
    assert _redis_registers(r, f"{redis_prefix}:x") == dense_bytes(ranks)
    sparse = redis_hll(
        tuple(i << 6 | r for i, r in [(0, 1), (63, 32), (64, 2), (65, 2), (16383, 1)])
    )
    assert sparse[4] == 1
    r.set(f"{redis_prefix}:y", sparse)
    ranks = bytearray(REGISTERS)
    ranks[0], ranks[63], ranks[64], ranks[65], ranks[16383] = 1, 32, 2, 2, 1
    assert _redis_registers(r, f"{redis_prefix}:y") == dense_bytes(ranks)


def test_pfmerge_of_client_sketches_counts_the_union_once(
    r: redis.Redis, redis_prefix: str
) -> None:
    """Three clients' overlapping contexts merged by Redis: the registers of the union,
    exactly, so a context seen by several clients counts once."""
    rng = random.Random(7)
    users = [f"user-{i}" for i in range(30_000)]
    parts = [rng.sample(users, 12_000) for _ in range(3)]
    union = set().union(*parts)
    day = f"{redis_prefix}:day"
    for part in parts:
        r.set(f"{redis_prefix}:src", redis_hll(_entries(_sketch(part, ""))))
        r.pfmerge(day, f"{redis_prefix}:src")
    whole = _sketch(sorted(union), "")
    ranks = bytearray(REGISTERS)
    for i, rank in whole.pairs():
        ranks[i] = rank
    assert _redis_registers(r, day) == dense_bytes(ranks)
    assert abs(r.pfcount(day) - len(union)) <= 0.03 * len(union)
