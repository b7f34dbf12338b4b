"""What the client counts for fleet insight, and the summaries it sends.

Counting sits on the evaluation path, where Python's per-bytecode cost is
the budget: an evaluation of the reference flag is about 4,000 machine
instructions, and a counting method of a dozen lines was 2,700 more.  So
the evaluation only appends ``(key, detail, context)`` to a bounded deque
(one C call, :attr:`InsightRecorder.record`), and :meth:`InsightRecorder.fold`
turns the batch into counts with C-level ``map``/``zip``/``Counter`` on the
client's event loop every :data:`FOLD_INTERVAL` seconds while evaluations
arrive (backing off to the report interval while idle).  The deque holds at
most :data:`MAX_PENDING` evaluations; when the loop cannot fold in time (a
loop blocked by a long CPU-bound burst), the oldest are dropped and
``saturated`` says so: counts are then a lower bound.

Distinct contexts are counted in HyperLogLog registers per flag and
variation (:mod:`flagwire.core.sketch`): at the fold, each distinct key of
the batch sets one register, its hash remembered for the next folds (at most
:data:`MAX_CACHED_KEYS`), so a returning context costs a dict lookup, not a
SHA-256.  Folding takes the deque's contents and clears it in two C calls;
an evaluation on another thread landing between them is not counted.

Sans-I/O: :meth:`InsightRecorder.drain` returns the summaries; the
connection loop sends them.
"""

from __future__ import annotations

import os
import socket
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from operator import attrgetter, itemgetter
from typing import Any, Final

from flagwire.core import protocol as proto
from flagwire.core.detail import EvaluationDetail
from flagwire.core.errors import ClientError
from flagwire.core.evaluation import Snapshot
from flagwire.core.limits import KEY_RE
from flagwire.core.reports import (
    DEFAULT_VARIATION,
    MAX_SUMMARY_EVENTS,
    MAX_SUMMARY_FLAGS,
    MAX_SUMMARY_FRAME,
    Identify,
    Summary,
    VariationStats,
)
from flagwire.core.sketch import Registers, register_of

__all__ = [
    "DEFAULT_REPORT_INTERVAL",
    "FOLD_INTERVAL",
    "MAX_CACHED_KEYS",
    "MAX_PENDING",
    "InsightRecorder",
]

#: Seconds between summaries unless the client is told otherwise.
DEFAULT_REPORT_INTERVAL: Final = 10.0
#: Seconds between folds of the recorded evaluations into counts.
FOLD_INTERVAL: Final = 0.05
#: Evaluations recorded and not yet folded, at most (about 100 bytes each, plus the
#: contexts they keep alive until the fold).
MAX_PENDING: Final = 1 << 17
#: Context keys whose register is remembered between folds (about 150 bytes each).
MAX_CACHED_KEYS: Final = 1 << 14

_OUTCOME: Final = attrgetter("variation_index", "reason")
_CONTEXT_KEY: Final = itemgetter("key")

_Outcome = tuple[int | None, str]


class InsightRecorder:
    """Evaluation counts, context keys and tracked events since the last summary.

    Args:
        sdk, sdk_version: what ``identify`` says the client is.
        app, instance: the application and instance names the user chose
            (instance defaults to ``host:pid``).
    """

    def __init__(self, sdk: str, sdk_version: str, app: str = "", instance: str = "") -> None:
        host = socket.gethostname()[:128]
        self.identity = Identify(
            sdk=sdk,
            sdk_version=sdk_version[:128],
            app=app[:128],
            instance=(instance or f"{host}:{os.getpid()}")[:128],
            host=host,
            pid=os.getpid(),
        )
        self._pending: deque[tuple[str, EvaluationDetail, Mapping[str, Any]]] = deque(
            maxlen=MAX_PENDING
        )
        #: The hot path: ``record((key, detail, context))`` after each evaluation.
        self.record: Callable[[tuple[str, EvaluationDetail, Mapping[str, Any]]], None] = (
            self._pending.append
        )
        self._counts: Counter[tuple[str, _Outcome]] = Counter()
        #: (flag, variation) -> the registers of the contexts that got it
        self._contexts: dict[tuple[str, int | None], Registers] = {}
        #: context key -> its sketch entry (``index << 6 | rank``), so a returning
        #: context costs a lookup, not a SHA-256
        self._entries: dict[str, int] = {}
        #: Folds that found the pending deque full (some evaluations were not counted).
        self.saturated = 0
        #: (flag, variation) -> event -> [count, sum, sum of squares]
        self._events: dict[tuple[str, int | None], dict[str, list[float]]] = {}
        self._since_ms: int | None = None
        #: The flags ``track`` attributes events to (pushed by the server).
        self.watched: tuple[str, ...] = ()
        #: Events dropped: more than the per-variation cap of distinct names in one interval.
        self.dropped_events = 0

    # --- the hot path ------------------------------------------------------------

    def count(self, key: str, detail: EvaluationDetail, context: Mapping[str, Any]) -> None:
        """Record one evaluation (what :attr:`record` does, with the tuple built here)."""
        self._pending.append((key, detail, context))

    def fold(self) -> int:
        """Turn the recorded evaluations into counts and context keys (on the loop).

        Returns:
            How many evaluations were folded.
        """
        pending = self._pending
        if not pending:
            return 0
        if len(pending) == MAX_PENDING:
            self.saturated += 1
        batch = list(pending)
        pending.clear()
        keys, details, contexts = zip(*batch, strict=True)
        slots = list(zip(keys, map(_OUTCOME, details), strict=True))
        self._counts.update(slots)
        try:
            cks: list[Any] = list(map(_CONTEXT_KEY, contexts))
        except Exception:  # a context without a key, or not a mapping: the slow way
            cks = [_context_key(c) for c in contexts]
        try:
            distinct = set(zip(slots, cks, strict=True))
        except TypeError:  # an unhashable key
            distinct = {(s, k) for s, k in zip(slots, cks, strict=True) if type(k) is str}
        cache = self._entries
        entries: dict[tuple[str, int | None], list[int]] = {}
        for (key, (index, _reason)), ck in distinct:
            if type(ck) is not str:
                continue
            entry = cache.get(ck)
            if entry is None:
                if len(cache) >= MAX_CACHED_KEYS:
                    cache.clear()
                i, rank = register_of(ck)
                entry = cache[ck] = i << 6 | rank
            entries.setdefault((key, index), []).append(entry)
        seen = self._contexts
        for slot, batch_entries in entries.items():  # one merge per flag and variation
            registers = seen.get(slot)
            if registers is None:
                registers = seen[slot] = Registers()
            registers.merge(batch_entries)
        return len(batch)

    def track(
        self, snapshot: Snapshot | None, event: str, context: Mapping[str, Any], value: float | None
    ) -> None:
        """Attribute ``event`` to the variation of each watched flag ``context`` receives.

        Raises:
            ClientError: ``event`` is not a valid name or ``value`` not a number.
        """
        if not isinstance(event, str) or not KEY_RE.match(event):
            raise ClientError(f"track: {event!r} is not a valid event name (like a flag key)")
        if value is not None and (type(value) not in (int, float) or value != value):
            raise ClientError(f"track: value must be a number or None, got {value!r}")
        if snapshot is None:
            return
        amount = float(value or 0)
        for key in self.watched:
            detail = snapshot.evaluate(key, context, None)
            per = self._events.setdefault((key, detail.variation_index), {})
            pair = per.get(event)
            if pair is None:
                if len(per) >= MAX_SUMMARY_EVENTS:
                    self.dropped_events += 1
                    continue
                per[event] = [1, amount, amount * amount]
            else:
                pair[0] += 1
                pair[1] += amount
                pair[2] += amount * amount

    def watch(self, flags: Iterable[str]) -> None:
        self.watched = tuple(flags)

    # --- summaries ---------------------------------------------------------------

    def drain(self, now_ms: int) -> list[Summary]:
        """Everything since the last drain as summaries that each fit one frame ([] if none)."""
        start = self._since_ms if self._since_ms is not None else now_ms
        self._since_ms = now_ms
        self.fold()
        counts, self._counts = self._counts, Counter()
        contexts, self._contexts = self._contexts, {}
        events, self._events = self._events, {}
        flags: dict[str, dict[int, _Building]] = {}
        for (key, (index, reason)), n in counts.items():
            b = _building(flags, key, index)
            kind = str(reason)  # Reason is a StrEnum; the wire wants plain str keys
            b.reasons[kind] = b.reasons.get(kind, 0) + n
        for (key, index), registers in contexts.items():
            _building(flags, key, index).registers = registers
        for (key, index), named in events.items():
            b = _building(flags, key, index)
            b.events.update({name: (int(c), s) for name, (c, s, _q) in named.items()})
            b.squares.update({name: q for name, (_c, _s, q) in named.items() if q})
        if not flags:
            return []
        start = min(start, now_ms)
        built = {key: {index: b.stats() for index, b in per.items()} for key, per in flags.items()}
        return _split(start, now_ms, built)


def _context_key(context: Any) -> Any:
    try:
        return context["key"]
    except Exception:
        return None


class _Building:
    __slots__ = ("events", "reasons", "registers", "squares")

    def __init__(self) -> None:
        self.reasons: dict[str, int] = {}
        self.registers: Registers | None = None
        self.events: dict[str, tuple[int, float]] = {}
        self.squares: dict[str, float] = {}

    def stats(self) -> VariationStats:
        sketch = self.registers.sketch() if self.registers is not None else ()
        return VariationStats(self.reasons, sketch, self.events, self.squares)


def _building(flags: dict[str, dict[int, _Building]], key: str, index: int | None) -> _Building:
    per = flags.setdefault(key, {})
    i = DEFAULT_VARIATION if index is None else index
    b = per.get(i)
    if b is None:
        b = per[i] = _Building()
    return b


def _split(start: int, end: int, flags: dict[str, dict[int, VariationStats]]) -> list[Summary]:
    """One summary, or as many as it takes for each to fit the frame and flag limits."""
    keys = list(flags)
    if len(keys) > MAX_SUMMARY_FLAGS:
        return [
            s
            for i in range(0, len(keys), MAX_SUMMARY_FLAGS)
            for s in _split(start, end, {k: flags[k] for k in keys[i : i + MAX_SUMMARY_FLAGS]})
        ]
    summary = Summary(start=start, end=end, flags=flags)
    if not keys or len(proto.encode(summary)) <= MAX_SUMMARY_FRAME:
        return [summary]
    if len(keys) == 1:  # one flag with many dense sketches: its variations in several
        (key,) = keys
        indexes = list(flags[key])
        if len(indexes) == 1:
            return [summary]  # one variation always fits (a sketch is at most 16 KiB)
        half = len(indexes) // 2
        return [
            s
            for part in (indexes[:half], indexes[half:])
            for s in _split(start, end, {key: {i: flags[key][i] for i in part}})
        ]
    half = len(keys) // 2
    return _split(start, end, {k: flags[k] for k in keys[:half]}) + _split(
        start, end, {k: flags[k] for k in keys[half:]}
    )
