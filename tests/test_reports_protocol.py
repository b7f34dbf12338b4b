"""Fleet-insight messages: round trips, bounds, and refusals that name the problem."""

from __future__ import annotations

import base64
import contextlib

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flagwire.core.errors import ProtocolError
from flagwire.core.limits import KEY_PATTERN
from flagwire.core.protocol import Identify, Summary, Watch, decode, encode
from flagwire.core.reports import MAX_SUMMARY_FLAGS, REASON_KINDS, VariationStats
from flagwire.core.sketch import DENSE_BYTES, MAX_RANK, MAX_SPARSE, REGISTERS

keys = st.from_regex(rf"\A{KEY_PATTERN}\Z", fullmatch=True)
labels = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF), max_size=40).filter(
    str.isprintable
)
sparse_sketches = st.lists(
    st.builds(lambda i, r: i << 6 | r, st.integers(0, REGISTERS - 1), st.integers(1, MAX_RANK)),
    max_size=40,
).map(tuple)
sketches = sparse_sketches | st.binary(min_size=DENSE_BYTES, max_size=DENSE_BYTES)
counts = st.integers(0, 2**53)
sums = st.floats(allow_nan=False, allow_infinity=False)

stats = st.builds(
    VariationStats,
    reasons=st.dictionaries(st.sampled_from(sorted(REASON_KINDS)), counts, max_size=6),
    sketch=sketches,
    events=st.dictionaries(keys, st.tuples(counts, sums), max_size=4),
)
summaries = st.builds(
    lambda start, width, flags: Summary(start=start, end=start + width, flags=flags),
    st.integers(0, 2**47),
    st.integers(0, 3_600_000),
    st.dictionaries(keys, st.dictionaries(st.integers(-1, 99), stats, max_size=3), max_size=5),
)
identities = st.builds(
    Identify,
    sdk=labels.filter(bool),
    sdk_version=labels,
    app=labels,
    instance=labels,
    host=labels,
    pid=st.integers(0, 2**32 - 1),
)
watches = st.lists(keys, max_size=20).map(lambda ks: Watch(tuple(ks)))


@settings(max_examples=300)
@given(st.one_of(summaries, identities, watches))
def test_round_trip(message: Summary | Identify | Watch) -> None:
    assert decode(encode(message)) == message


@given(summaries)
def test_summary_frame_starts_with_its_type(message: Summary) -> None:
    # The endpoint lets only frames with this prefix past the 4 KiB client limit.
    assert encode(message).startswith(b'{"type":"summary"')


GOOD_STATS = {"reasons": {"FALLTHROUGH": 2}, "sketch": [7 << 6 | 1, 300 << 6 | 2], "events": {}}


def _summary(**over: object) -> bytes:
    obj: dict[str, object] = {"type": "summary", "start": 1000, "end": 2000}
    obj["flags"] = {"f": {"0": GOOD_STATS}}
    obj.update(over)
    return orjson.dumps(obj)


BAD = [
    (_summary(start=3000), "start <= end"),
    (_summary(end=1000 + 3_600_001), "exceeds"),
    (_summary(flags=[]), "expected an object"),
    (_summary(flags={"Bad Key": {}}), "not a valid key"),
    (_summary(flags={"f": {"x": GOOD_STATS}}), "not a variation index"),
    (_summary(flags={"f": {"100": GOOD_STATS}}), "not a variation index"),
    (_summary(flags={"f": {"-2": GOOD_STATS}}), "not a variation index"),
    (_summary(flags={"f": {"0": {"reasons": {"MAYBE": 1}}}}), "unknown reason kind"),
    (_summary(flags={"f": {"0": {"reasons": {"OFF": -1}}}}), "expected a count"),
    (_summary(flags={"f": {"0": {"reasons": {"OFF": 2**53 + 1}}}}), "expected a count"),
    (_summary(flags={"f": {"0": {"contexts": ["0123456789abcdef"]}}}), "unknown field"),
    (_summary(flags={"f": {"0": {"sketch": ["alice@example.com", 1]}}}), "integers only"),
    (_summary(flags={"f": {"0": {"sketch": [65] * (MAX_SPARSE + 1)}}}), "at most 2048"),
    (_summary(flags={"f": {"0": {"sketch": [REGISTERS << 6]}}}), "in 0..1048575"),
    (_summary(flags={"f": {"0": {"sketch": [65, -1]}}}), "in 0..1048575"),
    (_summary(flags={"f": {"0": {"sketch": [65, 1.5]}}}), "integers only"),
    (_summary(flags={"f": {"0": {"sketch": [65, True]}}}), "integers only"),
    (_summary(flags={"f": {"0": {"sketch": "AAAA"}}}), "16384 base64 characters"),
    (_summary(flags={"f": {"0": {"sketch": "!" * 16384}}}), "must be base64"),
    (_summary(flags={"f": {"0": {"sketch": {"0": 1}}}}), "expected a list"),
    (_summary(flags={"f": {"0": {"events": {"err": [1]}}}}), "[count, sum]"),
    (_summary(flags={"f": {"0": {"events": {"err": [1, "x"]}}}}), "finite"),
    (_summary(flags={"f": {"0": {"attributes": {}}}}), "unknown field"),
    (
        _summary(flags={f"f{i}": {} for i in range(MAX_SUMMARY_FLAGS + 1)}),
        "exceed the limit of 1000",
    ),
    (b'{"type":"identify","sdk":""}', "non-empty"),
    (b'{"type":"identify","sdk":"py","app":"a\\u0000b"}', "control characters"),
    (b'{"type":"identify","sdk":"py","pid":-1}', "process id"),
    (orjson.dumps({"type": "identify", "sdk": "py", "host": "h" * 129}), "at most 128"),
    (b'{"type":"watch","flags":["ok","Not OK"]}', "not a valid key"),
    (b'{"type":"watch"}', "expected a list"),
]


def test_a_dense_sketch_travels_as_base64_of_its_bytes() -> None:
    dense = bytes(range(256)) * (DENSE_BYTES // 256)
    summary = Summary(0, 1, {"f": {0: VariationStats({"OFF": 1}, dense)}})
    wire = orjson.loads(encode(summary))
    assert base64.b64decode(wire["flags"]["f"]["0"]["sketch"]) == dense
    assert decode(encode(summary)) == summary


@pytest.mark.parametrize(("frame", "message"), BAD)
def test_bad_reports_raise_protocol_error_saying_why(frame: bytes, message: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(frame)
    assert message in str(info.value), str(info.value)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300)
@given(
    st.sampled_from(["summary", "identify", "watch"]),
    st.dictionaries(st.sampled_from(["start", "end", "flags", "sdk", "pid", "app"]), json_values),
)
def test_decoding_any_fields_raises_only_protocol_error(
    kind: str, fields: dict[str, object]
) -> None:
    with contextlib.suppress(ProtocolError):
        decode(orjson.dumps({"type": kind, **fields}))


def test_events_carry_an_optional_sum_of_squares() -> None:
    """[count, sum, sum of squares] for valued events (release guards test means with it);
    [count, sum] is still accepted, and a bad third number is refused on both decode paths."""
    stats = VariationStats(
        {"FALLTHROUGH": 3}, (), {"latency-ms": (3, 30.0), "error": (1, 0.0)}, {"latency-ms": 350.0}
    )
    msg = Summary(start=1, end=2, flags={"f": {0: stats}})
    frame = encode(msg)
    body = orjson.loads(frame)["flags"]["f"]["0"]["events"]
    assert body == {"latency-ms": [3, 30.0, 350.0], "error": [1, 0.0]}
    assert decode(frame) == msg
    for bad in (b"-1.0", b'"x"'):
        text = frame.replace(b"350.0", bad)
        with pytest.raises(ProtocolError, match="sum of squares"):
            decode(text)
    raw = orjson.loads(frame)
    raw["flags"]["f"]["0"]["events"]["latency-ms"] = [3, 30.0, 1.0, 2.0]
    with pytest.raises(ProtocolError, match=r"or \[count, sum, sum of squares\]"):
        decode(orjson.dumps(raw))
