"""The evaluator: an immutable :class:`Snapshot` of one environment, compiled on use.

A snapshot holds every flag and segment of an environment at one version.
Segments are compiled when it is built; each flag is compiled (``_compile``)
the first time it is evaluated and kept, so that an environment of thousands
of flags is ready as soon as its documents are parsed and holds the compiled
form only of the flags its application uses (issue 16: compiling every flag up
front cost ~0.7 ms and ~5 KiB per flag before the first evaluation).
:meth:`Snapshot.evaluate` is a pure, synchronous function of the snapshot and
a context, and it never raises: every failure is the caller's default with
reason ``ERROR`` and an :class:`ErrorKind`.  Changes produce new snapshots
(:meth:`Snapshot.with_flag` and friends) that share every other compiled flag,
so a reader holding the old one is never disturbed — which is what lets the
client swap snapshots under concurrent evaluations without locks.

Evaluation order (``docs/evaluation.md``): off → prerequisites → individual
targets → rules in order → fallthrough.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, Final

from flagwire.core._clauses import MalformedError
from flagwire.core._compile import USE_DEFAULT, CycleError
from flagwire.core._flags import Entries, FlagDocs, FlagEntry, derive, entries_of
from flagwire.core._segments import CompiledSegment, compile_segment
from flagwire.core.detail import ErrorKind, EvaluationDetail, Reason
from flagwire.core.errors import ValidationError
from flagwire.core.limits import KEY_RE, LIMITS

__all__ = ["ErrorKind", "EvaluationDetail", "Reason", "Snapshot"]

_EMPTY: Final[Mapping[str, dict[str, Any]]] = MappingProxyType({})
_NO_ENTRIES: Final[Entries] = {}
_ERROR: Final = Reason.ERROR
_PREREQUISITE_FAILED: Final = Reason.PREREQUISITE_FAILED


def _error(default: Any, kind: ErrorKind) -> EvaluationDetail:
    return EvaluationDetail(default, None, _ERROR, error_kind=kind)


class Snapshot:
    """All flags and segments of an environment at one version, compiled on use.

    Immutable: the ``with_*``/``without_*`` methods return a new snapshot
    that shares the compiled form of everything unchanged.  Documents that
    fail validation are kept (they are still the environment's data) and
    evaluate to ``ERROR``/``MALFORMED_FLAG``.  Flag documents are held as
    their JSON and decoded when read (``core/_flags.py``).

    Args:
        flags: flag key → flag document.
        segments: segment key → segment document.
        version: the environment version this snapshot reflects.
        epoch: the environment's epoch (changes when its history restarts).
    """

    __slots__ = ("_base", "_count", "_epoch", "_over", "_segments", "_segs", "_version")

    _base: Entries
    _over: Entries
    _count: int
    _segments: dict[str, dict[str, Any]]
    _segs: dict[str, CompiledSegment]
    _version: int
    _epoch: str

    def __init__(
        self,
        flags: Mapping[str, dict[str, Any]] = _EMPTY,
        segments: Mapping[str, dict[str, Any]] = _EMPTY,
        version: int = 0,
        epoch: str = "",
    ) -> None:
        self._base, self._over = entries_of(flags), _NO_ENTRIES
        self._count = len(self._base)
        self._segments = dict(segments)
        self._segs = {key: _compile_segment_as(key, doc) for key, doc in self._segments.items()}
        self._version = version
        self._epoch = epoch

    @classmethod
    def _derive(cls, base: Snapshot, version: int) -> Snapshot:
        new = cls.__new__(cls)
        new._base, new._over, new._count = base._base, base._over, base._count
        new._segments, new._segs = base._segments, base._segs
        new._version, new._epoch = version, base._epoch
        return new

    # --- read-only views ---------------------------------------------------

    @property
    def flags(self) -> Mapping[str, dict[str, Any]]:
        """The flag documents (a read-only mapping, decoded when read; do not mutate them)."""
        return FlagDocs(self._base, self._over, self._count)

    @property
    def segments(self) -> Mapping[str, dict[str, Any]]:
        """The segment documents as given (a read-only mapping)."""
        return MappingProxyType(self._segments)

    @property
    def version(self) -> int:
        """The environment version this snapshot reflects."""
        return self._version

    @property
    def epoch(self) -> str:
        """The environment epoch this snapshot belongs to."""
        return self._epoch

    @property
    def _compiled(self) -> Mapping[str, FlagEntry]:
        """The flags compiled so far (reading one compiles it): for tests and debugging."""
        return _Compiled(self)

    def __repr__(self) -> str:
        return (
            f"<Snapshot epoch={self._epoch!r} version={self._version} "
            f"flags={self._count} segments={len(self._segments)}>"
        )

    # --- changes -------------------------------------------------------------

    def with_flag(self, doc: dict[str, Any], version: int) -> Snapshot:
        """A new snapshot with ``doc`` added or replaced; it is compiled when first evaluated.

        Costs ``O(√n)`` for ``n`` flags, amortised (``core/_flags.py``).

        Raises:
            ValidationError: ``doc`` has no valid ``key`` to file it under.
                (Any other problem yields a flag that evaluates to MALFORMED_FLAG.)
        """
        key = _doc_key(doc)
        new = Snapshot._derive(self, version)
        if not (key in self._over or key in self._base):
            new._count += 1
        new._base, new._over = derive(self._base, self._over, key, FlagEntry(doc))
        return new

    def without_flag(self, key: str, version: int) -> Snapshot:
        """A new snapshot without flag ``key`` (no error if it was absent)."""
        new = Snapshot._derive(self, version)
        if key in self._over or key in self._base:
            new._base, new._over = derive(self._base, self._over, key, None)
            new._count -= 1
        return new

    def with_segment(self, doc: dict[str, Any], version: int) -> Snapshot:
        """A new snapshot with segment ``doc`` added or replaced; flags are not recompiled.

        Raises:
            ValidationError: ``doc`` has no valid ``key`` to file it under.
        """
        key = _doc_key(doc)
        new = Snapshot._derive(self, version)
        new._segments = {**self._segments, key: doc}
        new._segs = {**self._segs, key: _compile_segment_as(key, doc)}
        return new

    def without_segment(self, key: str, version: int) -> Snapshot:
        """A new snapshot without segment ``key``; clauses naming it stop matching."""
        new = Snapshot._derive(self, version)
        if key in self._segments:
            new._segments = {k: v for k, v in self._segments.items() if k != key}
            new._segs = {k: v for k, v in self._segs.items() if k != key}
        return new

    # --- evaluation ----------------------------------------------------------

    def evaluate(
        self,
        key: str,
        context: Mapping[str, Any],
        default: Any,
        kind: type | None = None,
    ) -> EvaluationDetail:
        """Evaluate flag ``key`` for ``context``.  Never raises.

        Args:
            key: the flag key.
            context: a mapping with a string ``"key"`` and any other attributes.
            default: served, with reason ``ERROR``, whenever evaluation fails, and
                with reason ``OFF`` by an off flag whose ``off_variation`` is null.
            kind: the value type the caller expects: ``bool``, ``str``, ``float``
                (any number; ``int`` is accepted too), ``dict`` or ``list`` (any
                JSON object or array), or None for any.  A flag of another kind
                gives ``WRONG_TYPE``.

        Returns:
            The value, its variation index and the reason.
        """
        try:
            flag = self._over.get(key) or self._base.get(key)
        except TypeError:  # an unhashable "key" cannot name a flag
            flag = None
        if flag is None:
            return _error(default, ErrorKind.FLAG_NOT_FOUND)
        run = flag.run
        if run is None:
            run = flag.compile(key)
        if kind is not None:
            try:
                accepted = kind in flag.accepts
            except TypeError:  # an unhashable "kind" is no kind at all
                accepted = False
            if not accepted:
                return _error(default, ErrorKind.WRONG_TYPE)
        try:
            ckey = context.get("key")
            if ckey.__class__ is not str:
                return _error(default, ErrorKind.INVALID_CONTEXT)
            detail = run(flag, context, ckey, self, ())
        except MalformedError:
            return _error(default, ErrorKind.MALFORMED_FLAG)
        except CycleError:
            return _error(default, ErrorKind.PREREQUISITE_CYCLE)
        except Exception:
            # Only a context that misbehaves (a Mapping whose get() raises, an
            # attribute whose __eq__ raises...) can get here.
            return _error(default, ErrorKind.INVALID_CONTEXT)
        if detail.value is USE_DEFAULT:
            return EvaluationDetail(
                default, None, detail.reason, prerequisite_key=detail.prerequisite_key
            )
        return detail

    def evaluate_all(self, context: Mapping[str, Any]) -> dict[str, EvaluationDetail]:
        """Evaluate every flag for ``context`` (default None), keyed by flag key."""
        evaluate = self.evaluate
        return {key: evaluate(key, context, None) for key in self.flags}

    # --- the Env protocol used by compiled code --------------------------------

    def segment(self, key: str) -> CompiledSegment | None:
        """The compiled segment ``key``, or None: a missing segment matches nobody."""
        return self._segs.get(key)

    def prerequisite(
        self,
        key: str,
        ctx: Mapping[str, Any],
        ckey: str,
        chain: tuple[str, ...],
        transitive: bool = True,
    ) -> EvaluationDetail | None:
        """Evaluate prerequisite ``key``; None if it cannot be satisfied.

        A prerequisite is satisfied when its flag exists, is valid, is on,
        passes its own prerequisites and serves the required variation (the
        caller compares the index).  ``chain`` holds the flags being
        evaluated above it, to detect cycles.  With ``transitive`` False
        (LaunchDarkly's rule, for flags imported from it) a prerequisite that
        failed its own prerequisites still counts by the off variation it serves.

        Raises:
            CycleError: ``key`` is already in ``chain`` or the chain is too deep.
        """
        if key in chain or len(chain) > LIMITS.max_prerequisite_depth:
            raise CycleError(" -> ".join((*chain, key)))
        flag = self._over.get(key) or self._base.get(key)
        if flag is None:
            return None
        run = flag.run
        if run is None:
            run = flag.compile(key)
        if not flag.on:
            return None
        try:
            detail = run(flag, ctx, ckey, self, chain)
        except MalformedError:
            return None
        if transitive and detail.reason is _PREREQUISITE_FAILED:
            return None
        return detail


class _Compiled(Mapping[str, FlagEntry]):
    """The compiled flags of a snapshot, as a mapping; reading a flag compiles it."""

    def __init__(self, snap: Snapshot) -> None:
        self._docs = FlagDocs(snap._base, snap._over, snap._count)

    def __getitem__(self, key: str) -> FlagEntry:
        entry = self._docs.entry(key)
        if entry is None:
            raise KeyError(key)
        if entry.run is None:
            entry.compile(key)
        return entry

    def __iter__(self) -> Iterator[str]:
        docs = self._docs
        return (key for key in docs if docs.entry(key).run is not None)  # type: ignore[union-attr]

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _doc_key(doc: Any) -> str:
    key = doc.get("key") if isinstance(doc, dict) else None
    if not isinstance(key, str) or not KEY_RE.match(key):
        raise ValidationError([("key", f"{key!r} is not a valid key")])
    return key


def _compile_segment_as(key: str, doc: Any) -> CompiledSegment:
    if not isinstance(doc, dict) or doc.get("key") != key:
        return compile_segment(None)  # compiles to a segment that reports MALFORMED_FLAG
    return compile_segment(doc)
