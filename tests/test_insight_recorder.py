"""The client's insight recorder, with no network: counts, sketches, odd contexts, splitting."""

from __future__ import annotations

from typing import Any

import pytest

from flagwire._insight import MAX_PENDING, InsightRecorder
from flagwire.core.errors import ClientError
from flagwire.core.evaluation import Snapshot
from flagwire.core.protocol import decode, encode
from flagwire.core.reports import MAX_SUMMARY_FRAME, Summary
from flagwire.core.sketch import MAX_SPARSE, Registers, register_of, unpack_dense
from tests.support.builders import flag, rollout


def _snapshot(*docs: dict[str, Any]) -> Snapshot:
    return Snapshot({d["key"]: d for d in docs}, {}, version=1)


def _registers(sketch: tuple[int, ...] | bytes) -> dict[int, int]:
    if isinstance(sketch, bytes):
        return {i: r for i, r in enumerate(unpack_dense(sketch)) if r}
    out = {v >> 6: v & 63 for v in sketch}
    assert len(out) == len(sketch)  # one entry per register
    return out


def _expected(keys: set[str]) -> dict[int, int]:
    out: dict[int, int] = {}
    for k in keys:
        i, r = register_of(k)
        out[i] = max(out.get(i, 0), r)
    return out


def test_counts_by_flag_variation_and_reason_with_registers() -> None:
    snap = _snapshot(flag("a", fallthrough=rollout(50, 50)), flag("off", on=False))
    rec = InsightRecorder("py", "1", app="web")
    expected: dict[int, set[str]] = {}
    for i in range(20):
        ctx = {"key": f"u{i}"}
        d = snap.evaluate("a", ctx, None)
        rec.record(("a", d, ctx))
        assert d.variation_index is not None
        expected.setdefault(d.variation_index, set()).add(f"u{i}")
        rec.count("off", snap.evaluate("off", ctx, None), ctx)
    rec.count("missing", snap.evaluate("missing", {"key": "x"}, None), {"key": "x"})
    [summary] = rec.drain(1_000)
    assert decode(encode(summary)) == summary
    a = summary.flags["a"]
    assert {i: _registers(s.sketch) for i, s in a.items()} == {
        i: _expected(keys) for i, keys in expected.items()
    }
    assert sum(s.reasons["FALLTHROUGH"] for s in a.values()) == 20
    assert summary.flags["off"][1].reasons == {"OFF": 20}
    assert summary.flags["missing"][-1].reasons == {"ERROR": 1}
    assert rec.drain(2_000) == []  # nothing since


@pytest.mark.parametrize("n", [96, 20_000])
def test_every_context_key_sets_its_register_and_odd_contexts_are_only_counted(n: int) -> None:
    """No cap on contexts: 20,000 in one interval make a dense sketch of all of them
    (the recorder once kept the first 32 keys and dropped the rest)."""
    snap = _snapshot(flag("a"))
    rec = InsightRecorder("py", "1")
    for i in range(n):
        ctx = {"key": f"u{i}"}
        rec.count("a", snap.evaluate("a", ctx, None), ctx)
        if i % 5_000 == 0:
            rec.fold()  # keys met across folds
    odd: list[Any] = [{"nokey": 1}, {"key": ["unhashable"]}, {"key": 7}, "not a mapping"]
    for ctx in odd:
        rec.count("a", snap.evaluate("a", {"key": "k"}, None), ctx)
    [summary] = rec.drain(1)
    stats = summary.flags["a"][0]
    assert stats.evaluations == n + len(odd)
    assert isinstance(stats.sketch, bytes) == (
        len(_expected({f"u{i}" for i in range(n)})) > MAX_SPARSE
    )
    assert _registers(stats.sketch) == _expected({f"u{i}" for i in range(n)})
    assert decode(encode(summary)) == summary


def test_returning_contexts_are_hashed_once_per_interval_and_cache_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flagwire import _insight

    hashed: list[str] = []

    def counting(key: str) -> tuple[int, int]:
        hashed.append(key)
        return register_of(key)

    monkeypatch.setattr(_insight, "register_of", counting)
    monkeypatch.setattr(_insight, "MAX_CACHED_KEYS", 50)
    snap = _snapshot(flag("a"))
    rec = InsightRecorder("py", "1")
    for _ in range(3):
        for i in range(40):
            ctx = {"key": f"u{i}"}
            rec.count("a", snap.evaluate("a", ctx, None), ctx)
        rec.fold()
    assert len(hashed) == 40  # three folds, one SHA-256 per key
    for i in range(40, 100):
        ctx = {"key": f"u{i}"}
        rec.count("a", snap.evaluate("a", ctx, None), ctx)
    rec.fold()
    assert len(rec._entries) <= 50
    [summary] = rec.drain(1)
    assert _registers(summary.flags["a"][0].sketch) == _expected({f"u{i}" for i in range(100)})


def test_one_flag_with_many_dense_variations_splits_by_variation() -> None:
    rec = InsightRecorder("py", "1")
    # Dense sketches for 40 variations (16 KiB each) do not fit one 256 KiB frame.
    for v in range(40):
        regs = Registers()
        for u in range(3_000):
            regs.add_key(f"{v}-{u}")
        rec._contexts["m", v] = regs
        rec._counts["m", (v, "FALLTHROUGH")] += 1
    summaries = rec.drain(5)
    assert len(summaries) > 1
    assert all(len(encode(s)) <= MAX_SUMMARY_FRAME for s in summaries)
    assert sorted(v for s in summaries for v in s.flags["m"]) == list(range(40))


def test_big_summaries_split_to_fit_a_frame() -> None:
    docs = [flag(f"f{i}") for i in range(600)]
    snap = _snapshot(*docs)
    rec = InsightRecorder("py", "1")
    for i in range(600):
        for u in range(64):  # a sketch of about 64 registers: 600 do not fit one frame
            ctx = {"key": f"user-{u}"}
            rec.count(f"f{i}", snap.evaluate(f"f{i}", ctx, None), ctx)
    summaries = rec.drain(5)
    assert len(summaries) > 1
    assert all(len(encode(s)) <= MAX_SUMMARY_FRAME for s in summaries)
    assert sorted(k for s in summaries for k in s.flags) == sorted(f"f{i}" for i in range(600))


def test_track_attributes_events_to_watched_flags_only() -> None:
    snap = _snapshot(flag("a", fallthrough=rollout(50, 50)), flag("b"))
    rec = InsightRecorder("py", "1")
    rec.track(snap, "error", {"key": "u1"}, None)  # nothing watched: nothing recorded
    assert rec.drain(1) == []
    rec.watch(["a"])
    index = snap.evaluate("a", {"key": "u1"}, None).variation_index
    assert index is not None
    rec.track(snap, "latency-ms", {"key": "u1"}, 12.5)
    rec.track(snap, "latency-ms", {"key": "u1"}, 7)
    [summary] = rec.drain(2)
    assert summary.flags == {"a": {index: summary.flags["a"][index]}}
    assert summary.flags["a"][index].events == {"latency-ms": (2, 19.5)}
    assert summary.flags["a"][index].reasons == {}
    with pytest.raises(ClientError, match="valid event name"):
        rec.track(snap, "Bad Name", {"key": "u1"}, None)
    with pytest.raises(ClientError, match="number"):
        rec.track(snap, "ok", {"key": "u1"}, "12")  # type: ignore[arg-type]


def test_a_full_pending_queue_drops_the_oldest_and_says_so() -> None:
    snap = _snapshot(flag("a"))
    rec = InsightRecorder("py", "1")
    d = snap.evaluate("a", {"key": "u"}, None)
    for _ in range(MAX_PENDING + 10):
        rec.record(("a", d, {"key": "u"}))
    [summary] = rec.drain(1)
    assert rec.saturated == 1
    assert summary.flags["a"][0].evaluations == MAX_PENDING


def test_identify_names_the_sdk_app_and_a_default_instance() -> None:
    rec = InsightRecorder("flagwire-python", "9.9", app="web")
    ident = rec.identity
    assert (ident.sdk, ident.sdk_version, ident.app) == ("flagwire-python", "9.9", "web")
    assert ident.instance == f"{ident.host}:{ident.pid}"
    assert isinstance(Summary(0, 0, {}), Summary)
