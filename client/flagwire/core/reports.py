"""Fleet-insight messages: what a client tells the server about its own use of flags.

Client → server: ``identify`` (once per connection: which SDK, application,
instance, host and process) and ``summary`` (every reporting interval: per
flag and variation, the evaluations by reason kind, a sketch of the distinct
contexts and application events).  Server → client: ``watch`` (which flags
``track`` attributes events to).

Distinct contexts travel as HyperLogLog registers (:mod:`flagwire.core.sketch`),
never as keys, clear or hashed: the server merges them across clients,
instances and days without counting a context twice, at any count.

Pure: :func:`flagwire.core.protocol.decode` calls :func:`decode_report` and
:func:`flagwire.core.protocol.encode` calls :func:`report_object`; every
bound below is checked there, so the server aggregates only valid summaries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from flagwire.core.errors import ProtocolError
from flagwire.core.limits import KEY_RE, LIMITS
from flagwire.core.sketch import Sketch, parse_sketch, sketch_json

__all__ = [
    "DEFAULT_VARIATION",
    "MAX_SUMMARY_EVENTS",
    "MAX_SUMMARY_FLAGS",
    "MAX_SUMMARY_FRAME",
    "MAX_SUMMARY_WINDOW_MS",
    "MAX_WATCHED_FLAGS",
    "REASON_KINDS",
    "Identify",
    "Summary",
    "VariationStats",
    "Watch",
    "decode_report",
    "report_object",
]

#: Largest summary frame the server reads; other client frames stay under ``MAX_CLIENT_FRAME``.
MAX_SUMMARY_FRAME: Final = 256 * 1024
#: Flags in one summary (a client with more sends several summaries).
MAX_SUMMARY_FLAGS: Final = 1_000
#: Distinct event names per flag and variation in one summary.
MAX_SUMMARY_EVENTS: Final = 16
#: Longest interval one summary may cover (milliseconds).
MAX_SUMMARY_WINDOW_MS: Final = 3_600_000
#: Flags in one ``watch`` message.
MAX_WATCHED_FLAGS: Final = 1_000
#: Variation index standing for "the caller's default was served" (errors, off without one).
DEFAULT_VARIATION: Final = -1
#: Reason kinds a summary counts by (the values of :class:`flagwire.core.detail.Reason`).
REASON_KINDS: Final = frozenset(
    {"OFF", "TARGET_MATCH", "RULE_MATCH", "FALLTHROUGH", "PREREQUISITE_FAILED", "ERROR"}
)

_MAX_LABEL: Final = 128
_MAX_COUNT: Final = 2**53
#: The variation indexes a summary may name, as their JSON object keys.
_VARIATIONS: Final = {str(i): i for i in range(DEFAULT_VARIATION, LIMITS.max_variations)}
_STATS_FIELDS: Final = frozenset({"reasons", "sketch", "events"})


@dataclass(frozen=True, slots=True)
class Identify:
    """Client → server, once per connection: who is evaluating."""

    sdk: str
    sdk_version: str
    app: str = ""
    instance: str = ""
    host: str = ""
    pid: int = 0
    type: Literal["identify"] = field(default="identify", init=False, repr=False)


@dataclass(frozen=True, slots=True)
class VariationStats:
    """One flag variation's figures in one summary.

    ``sketch`` holds the registers of the contexts that got the variation
    (:mod:`flagwire.core.sketch`).  ``events`` maps an event name to ``(count, sum
    of values)``; ``squares`` an
    event name to the sum of its values squared, for events tracked with values
    (a release guard's test on means needs the variance).  On the wire an event
    is ``[count, sum]`` or ``[count, sum, sum of squares]``.
    """

    reasons: dict[str, int]
    sketch: Sketch = ()
    events: dict[str, tuple[int, float]] = field(default_factory=dict)
    squares: dict[str, float] = field(default_factory=dict)

    @property
    def evaluations(self) -> int:
        return sum(self.reasons.values())


@dataclass(frozen=True, slots=True)
class Summary:
    """Client → server: what was evaluated between ``start`` and ``end`` (Unix ms).

    ``flags`` maps a flag key to its variations (index, or
    :data:`DEFAULT_VARIATION`) and their :class:`VariationStats`.
    """

    start: int
    end: int
    flags: dict[str, dict[int, VariationStats]]
    type: Literal["summary"] = field(default="summary", init=False, repr=False)


@dataclass(frozen=True, slots=True)
class Watch:
    """Server → client: the flags whose variations ``track`` attributes events to."""

    flags: tuple[str, ...]
    type: Literal["watch"] = field(default="watch", init=False, repr=False)


Report = Identify | Summary | Watch


def report_object(message: Report) -> dict[str, Any]:
    """The JSON object of ``message`` (``type`` first, so a summary frame starts with it)."""
    if isinstance(message, Summary):
        return {
            "type": "summary",
            "start": message.start,
            "end": message.end,
            "flags": {
                key: {
                    str(index): {
                        "reasons": stats.reasons,
                        "sketch": sketch_json(stats.sketch),
                        "events": {
                            n: [c, s, stats.squares[n]] if n in stats.squares else [c, s]
                            for n, (c, s) in stats.events.items()
                        },
                    }
                    for index, stats in variations.items()
                }
                for key, variations in message.flags.items()
            },
        }
    if isinstance(message, Identify):
        return {
            "type": "identify",
            "sdk": message.sdk,
            "sdk_version": message.sdk_version,
            "app": message.app,
            "instance": message.instance,
            "host": message.host,
            "pid": message.pid,
        }
    return {"type": "watch", "flags": list(message.flags)}


# --- decoding -------------------------------------------------------------


def _show(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def _label(obj: dict[str, Any], name: str, *, required: bool = False) -> str:
    value = obj.get(name, None if required else "")
    if not isinstance(value, str) or len(value) > _MAX_LABEL or (required and not value):
        need = "a non-empty" if required else "a"
        raise ProtocolError(
            f"identify.{name}: expected {need} string of at most {_MAX_LABEL} characters, "
            f"got {_show(value)}"
        )
    if not value.isprintable():
        raise ProtocolError(f"identify.{name}: control characters are not allowed")
    return value


def _count(value: Any, where: str) -> int:
    if type(value) is not int or not 0 <= value <= _MAX_COUNT:
        raise ProtocolError(f"{where}: expected a count (0..2^53), got {_show(value)}")
    return value


def _object(value: Any, where: str, limit: int) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{where}: expected an object, got {_show(value)}")
    if len(value) > limit:
        raise ProtocolError(f"{where}: {len(value)} entries exceed the limit of {limit}")
    return value


def _stats(value: Any, where: str) -> VariationStats:
    obj = _object(value, where, 3)
    extra = set(obj) - _STATS_FIELDS
    if extra:
        raise ProtocolError(f"{where}: unknown field {sorted(extra)[0]!r}")
    reasons: dict[str, int] = {}
    for kind, n in _object(obj.get("reasons", {}), f"{where}.reasons", 6).items():
        if kind not in REASON_KINDS:
            raise ProtocolError(f"{where}.reasons: unknown reason kind {kind[:40]!r}")
        reasons[kind] = _count(n, f"{where}.reasons.{kind}")
    try:
        sketch = parse_sketch(obj.get("sketch", []))
    except ValueError as exc:
        raise ProtocolError(f"{where}.sketch: {exc}") from None
    events: dict[str, tuple[int, float]] = {}
    squares: dict[str, float] = {}
    raw_events = _object(obj.get("events", {}), f"{where}.events", MAX_SUMMARY_EVENTS)
    for name, pair in raw_events.items():
        if not KEY_RE.match(name):
            raise ProtocolError(f"{where}.events: {name[:40]!r} is not a valid event name")
        if not isinstance(pair, list) or len(pair) not in (2, 3):
            raise ProtocolError(
                f"{where}.events.{name}: expected [count, sum] or [count, sum, sum of squares]"
            )
        total = pair[1]
        if type(total) not in (int, float) or not math.isfinite(total):
            raise ProtocolError(f"{where}.events.{name}: sum must be a finite number")
        if len(pair) == 3:
            sq = pair[2]
            if type(sq) not in (int, float) or not math.isfinite(sq) or sq < 0:
                raise ProtocolError(
                    f"{where}.events.{name}: sum of squares must be a finite number >= 0"
                )
            squares[name] = float(sq)
        events[name] = (_count(pair[0], f"{where}.events.{name}"), float(total))
    return VariationStats(reasons, sketch, events, squares)


def _stats_fast(obj: Any) -> VariationStats | None:
    """:func:`_stats` for a valid object without building a message per field; None if
    anything is off (then :func:`_stats` says what).  A server decodes a thousand
    summaries of a hundred variations a second: this is most of that cost."""
    if type(obj) is not dict or not _STATS_FIELDS.issuperset(obj):
        return None
    reasons = obj.get("reasons", {})
    if type(reasons) is not dict or not REASON_KINDS.issuperset(reasons):
        return None
    for n in reasons.values():
        if type(n) is not int or not 0 <= n <= _MAX_COUNT:
            return None
    try:
        sketch = parse_sketch(obj.get("sketch", []))
    except ValueError:
        return None
    raw = obj.get("events", {})
    if type(raw) is not dict or len(raw) > MAX_SUMMARY_EVENTS:
        return None
    events: dict[str, tuple[int, float]] = {}
    squares: dict[str, float] = {}
    for name, pair in raw.items():
        if type(pair) is not list or not 2 <= len(pair) <= 3 or not KEY_RE.match(name):
            return None
        count, total = pair[0], pair[1]
        if type(count) is not int or not 0 <= count <= _MAX_COUNT:
            return None
        if type(total) not in (int, float) or not math.isfinite(total):
            return None
        if len(pair) == 3:
            sq = pair[2]
            if type(sq) not in (int, float) or not math.isfinite(sq) or sq < 0:
                return None
            squares[name] = float(sq)
        events[name] = (count, float(total))
    return VariationStats(reasons, sketch, events, squares)


def _summary(obj: dict[str, Any]) -> Summary:
    start, end = obj.get("start"), obj.get("end")
    if type(start) is not int or type(end) is not int or not 0 <= start <= end < 2**48:
        raise ProtocolError("summary.start/end: expected Unix milliseconds with start <= end")
    if end - start > MAX_SUMMARY_WINDOW_MS:
        raise ProtocolError(
            f"summary: a window of {end - start} ms exceeds {MAX_SUMMARY_WINDOW_MS} ms"
        )
    flags: dict[str, dict[int, VariationStats]] = {}
    raw = _object(obj.get("flags"), "summary.flags", MAX_SUMMARY_FLAGS)
    for key, variations in raw.items():
        if not KEY_RE.match(key):
            raise ProtocolError(f"summary.flags: {key[:140]!r} is not a valid key")
        if type(variations) is not dict or len(variations) > LIMITS.max_variations + 1:
            _object(variations, f"summary.flags[{key!r}]", LIMITS.max_variations + 1)
        per: dict[int, VariationStats] = {}
        for index, stats in variations.items():
            i = _VARIATIONS.get(index)
            if i is None:
                raise ProtocolError(
                    f"summary.flags[{key!r}]: {index[:20]!r} is not a variation index"
                )
            per[i] = _stats_fast(stats) or _stats(stats, f"summary.flags[{key!r}][{index}]")
        flags[key] = per
    return Summary(start=start, end=end, flags=flags)


def decode_report(kind: str, obj: dict[str, Any]) -> Report:
    """Build the report message of type ``kind`` from its decoded JSON object.

    Raises:
        ProtocolError: a field is missing, mistyped or over its bound.
    """
    if kind == "summary":
        return _summary(obj)
    if kind == "identify":
        pid = obj.get("pid", 0)
        if type(pid) is not int or not 0 <= pid < 2**32:
            raise ProtocolError(f"identify.pid: expected a process id, got {_show(pid)}")
        return Identify(
            sdk=_label(obj, "sdk", required=True),
            sdk_version=_label(obj, "sdk_version"),
            app=_label(obj, "app"),
            instance=_label(obj, "instance"),
            host=_label(obj, "host"),
            pid=pid,
        )
    flags = obj.get("flags")
    if not isinstance(flags, list) or len(flags) > MAX_WATCHED_FLAGS:
        raise ProtocolError(f"watch.flags: expected a list of at most {MAX_WATCHED_FLAGS} keys")
    for key in flags:
        if not isinstance(key, str) or not KEY_RE.match(key):
            raise ProtocolError(f"watch.flags: {_show(key)} is not a valid key")
    return Watch(tuple(flags))
