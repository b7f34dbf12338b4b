"""The committed operator and key vectors (tests/vectors/operators.json), plus properties.

The vectors are what a client in another language checks itself against; the
properties say the same things for every input hypothesis can think of.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flagwire.core.errors import ProtocolError, ValidationError
from flagwire.core.evaluation import Reason, Snapshot
from flagwire.core.limits import KEY_RE
from flagwire.core.model import validate_flag
from flagwire.core.operators import parse_semver, parse_timestamp
from flagwire.core.protocol import decode
from tests.support.builders import clause, flag, rule

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "vectors" / "operators.json").read_text("utf-8")
)


def _matches(op: str, values: list[Any], attribute: Any) -> bool:
    doc = flag("f", rules=[rule(clause("a", op, *values), variation=0)], fallthrough=1)
    detail = Snapshot({"f": doc}).evaluate("f", {"key": "k", "a": attribute}, None)
    assert detail.reason in (Reason.RULE_MATCH, Reason.FALLTHROUGH), detail
    return detail.reason == Reason.RULE_MATCH


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: f"{c['op']} {c['why']}")
def test_operator_vector(case: dict[str, Any]) -> None:
    assert _matches(case["op"], case["values"], case["attribute"]) is case["matches"]


@pytest.mark.parametrize("case", VECTORS["invalid_values"], ids=lambda c: c["value"])
def test_invalid_value_vector(case: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as info:
        validate_flag(flag("f", rules=[rule(clause("a", case["op"], case["value"]))]))
    assert [path for path, _ in info.value.errors] == ["rules[0].clauses[0].values[0]"]


def _patch(key: str) -> bytes:
    return orjson.dumps(
        {"type": "patch", "kind": "flag", "key": key, "data": {"key": key}, "version": 1}
    )


def _protocol_accepts(key: str) -> bool:
    try:
        decode(_patch(key))
    except ProtocolError:
        return False
    return True


def _model_accepts(key: str) -> bool:
    try:
        validate_flag(flag(key))
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize("key", VECTORS["keys"]["valid"])
def test_valid_key_vector(key: str) -> None:
    assert KEY_RE.match(key)
    assert _protocol_accepts(key)
    assert _model_accepts(key)


@pytest.mark.parametrize("key", VECTORS["keys"]["invalid"], ids=repr)
def test_invalid_key_vector(key: str) -> None:
    assert not KEY_RE.match(key)
    assert not _protocol_accepts(key)
    assert not _model_accepts(key)


# --- properties ---------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12))
def test_protocol_and_model_agree_on_every_key(key: str) -> None:
    assert _protocol_accepts(key) == _model_accepts(key) == bool(KEY_RE.match(key))


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
instants = st.integers(
    # year 1 .. 9999, in nanoseconds since the epoch
    int((datetime(1, 1, 2, tzinfo=UTC) - EPOCH) / timedelta(microseconds=1)) * 1000,
    int((datetime(9999, 12, 30, tzinfo=UTC) - EPOCH) / timedelta(microseconds=1)) * 1000,
)


def rfc3339(ns: int, offset_minutes: int = 0) -> str:
    seconds, frac = divmod(ns, 1_000_000_000)
    local = EPOCH + timedelta(seconds=seconds, minutes=offset_minutes)
    sign = "+" if offset_minutes >= 0 else "-"
    hours, minutes = divmod(abs(offset_minutes), 60)
    zone = "Z" if offset_minutes == 0 else f"{sign}{hours:02d}:{minutes:02d}"
    # (not strftime's %Y: glibc writes year 1 as "1", not "0001")
    date = f"{local.year:04d}-{local.month:02d}-{local.day:02d}"
    return f"{date}T{local:%H:%M:%S}.{frac:09d}{zone}"


@settings(max_examples=300, deadline=None)
@given(instants, st.integers(-23 * 60 - 59, 23 * 60 + 59))
def test_timestamps_keep_nanoseconds(ns: int, offset: int) -> None:
    """Two instants 1 ns apart compare as they should, in any zone (no float rounding)."""
    try:
        text, later = rfc3339(ns, offset), rfc3339(ns + 1, offset)
    except OverflowError:  # the local time left years 1..9999
        return
    first, second = parse_timestamp(text), parse_timestamp(later)
    assert first is not None
    assert second is not None
    assert first < second
    assert parse_timestamp(rfc3339(ns)) == first  # the same instant in UTC


non_ascii_digits = st.characters(categories=["Nd"]).filter(lambda c: not "0" <= c <= "9")


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["1.2.3", "10.20.30-rc.1", "2024-05-01T12:00:00.5+01:00"]), st.data())
def test_only_ascii_digits_parse(text: str, data: st.DataObject) -> None:
    """Replacing any ASCII digit by another script's digit makes the text unparseable."""
    positions = [i for i, c in enumerate(text) if "0" <= c <= "9"]
    i = data.draw(st.sampled_from(positions))
    other = text[:i] + data.draw(non_ascii_digits) + text[i + 1 :]
    assert parse_semver(other) is None
    assert parse_timestamp(other) is None
