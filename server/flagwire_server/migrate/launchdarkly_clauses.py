"""LaunchDarkly clauses → flagwire clauses, for the importer (``migrate/launchdarkly.py``).

Pure: no I/O.  One clause at a time: its operator, attribute reference and
values, decided for the contexts flagwire evaluates (single ``user``
contexts).  A clause that always matches a user is left out (None), one that
never can raises :class:`Skip` with the reason, and values that can never
match are dropped with a note: the importer's report shows every one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from flagwire.core.operators import parse_semver, parse_timestamp, regex_problem

__all__ = ["USER", "ClauseConverter", "Skip", "lower"]

_OPS: Final = {
    "in": "in",
    "startsWith": "starts_with",
    "endsWith": "ends_with",
    "contains": "contains",
    "matches": "matches",
    "lessThan": "lt",
    "lessThanOrEqual": "lte",
    "greaterThan": "gt",
    "greaterThanOrEqual": "gte",
    "before": "before",
    "after": "after",
    "semVerEqual": "semver_eq",
    "semVerLessThan": "semver_lt",
    "semVerGreaterThan": "semver_gt",
    "segmentMatch": "segment_match",
}
#: The only context kind flagwire evaluates.
USER: Final = "user"
#: A clause every context matches (a context key is a string, and every string
#: starts with ""): stands in for a LaunchDarkly clause that is always true for a user.
_ALWAYS: Final = {"attribute": "key", "op": "starts_with", "values": [""], "negate": False}


class Skip(Exception):
    """This rule (or document) cannot be carried over; the message says why."""


class ClauseConverter:
    """Clauses and attribute references; report lines go to ``notes``.

    Args:
        seg_keys: LaunchDarkly segment key → flagwire key (``segmentMatch`` values).
    """

    def __init__(self, seg_keys: dict[str, str]) -> None:
        self.seg_keys = seg_keys
        self.notes: list[str] = []

    def clauses(self, clauses: list[Any], *, segment: bool) -> list[dict[str, Any]]:
        out = []
        for c in clauses:
            converted = self.clause(c, segment=segment)
            if converted is not None:
                out.append(converted)
        return out or [dict(_ALWAYS)]

    def clause(self, c: Mapping[str, Any], *, segment: bool) -> dict[str, Any] | None:
        """A flagwire clause; None for one that always matches; Skip when it never can."""
        op = _OPS.get(c.get("op", ""))
        negate = bool(c.get("negate"))
        if op is None:
            raise Skip(f"unknown operator {c.get('op')!r}")
        values = list(c.get("values") or [])
        if op == "segment_match":
            if segment:
                raise Skip("a segment referring to another segment (flagwire does not nest them)")
            keys = [self.seg_keys.get(v, lower(v)) for v in values if isinstance(v, str)]
            if not keys:
                raise Skip("segmentMatch without segment keys")
            return {"op": op, "values": keys, "negate": negate}
        kind = c.get("contextKind")
        attr = c.get("attribute")
        if not isinstance(attr, str) or not attr:
            raise Skip("a clause without an attribute")
        if attr in ("kind", "/kind"):
            _kind_clause(op, values, negate)
            return None
        if kind is not None and kind != USER:
            raise Skip(f"a clause on context kind {kind!r} never matches a user")
        name = self.attribute(attr, kind)
        kept = [v for v in values if _usable(op, v)]
        if len(kept) < len(values):
            self.notes.append(
                f"clause on {attr!r}: {len(values) - len(kept)} value(s) that can never match "
                f"{c.get('op')} dropped"
            )
        if not kept:
            if negate:
                raise Skip(f"a negated {c.get('op')} clause with no usable value")
            raise Skip(f"a {c.get('op')} clause with no usable value never matches")
        return {"attribute": name, "op": op, "values": kept, "negate": negate}

    def attribute(self, ref: str, kind: Any) -> str:
        """A LaunchDarkly attribute (a reference when the clause names a kind) as a name."""
        if kind is None or not ref.startswith("/"):
            return ref
        parts = ref[1:].split("/")
        if len(parts) != 1 or not parts[0]:
            raise Skip(f"attribute path {ref!r} (flagwire matches top-level attributes only)")
        return parts[0].replace("~1", "/").replace("~0", "~")


_KIND_TESTS: Final[dict[str, Callable[[Any], bool]]] = {
    "in": lambda v: bool(v == USER),
    "starts_with": lambda v: isinstance(v, str) and USER.startswith(v),
    "ends_with": lambda v: isinstance(v, str) and USER.endswith(v),
    "contains": lambda v: isinstance(v, str) and v in USER,
}


def _kind_clause(op: str, values: list[Any], negate: bool) -> None:
    """A clause on ``kind`` is decided now: a user context's only kind is "user".

    Returns None (always true: the clause is left out) or raises Skip (never true).
    """
    test = _KIND_TESTS.get(op)
    if test is None:
        raise Skip(f"a clause on the context kind with operator {op} (not imported)")
    if any(test(v) for v in values) is negate:
        raise Skip("a clause on the context kind that a user never matches")
    return None


def lower(key: Any) -> str:
    return key.lower() if isinstance(key, str) else str(key)


def _usable(op: str, v: Any) -> bool:
    """Can LaunchDarkly's clause value ``v`` ever match with operator ``op``?"""
    if op == "in":
        return isinstance(v, str | bool | int | float)
    if op in ("starts_with", "ends_with", "contains"):
        return isinstance(v, str)
    if op == "matches":
        return isinstance(v, str) and regex_problem(v) is None
    if op in ("lt", "lte", "gt", "gte"):
        return isinstance(v, int | float) and not isinstance(v, bool)
    if op in ("before", "after"):
        return not isinstance(v, bool) and parse_timestamp(v) is not None
    return parse_semver(v) is not None  # semver_*
