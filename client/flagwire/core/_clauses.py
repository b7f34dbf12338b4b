"""Clause compilation: per-operator tests built once, run per call (segments: ``_segments``).

Every clause becomes a callable ``clause(context, env) -> bool``.  Values
are prepared here once (frozensets for ``in``, a tuple for ``starts_with`` so
one ``str.startswith`` call tests every prefix, one RE2 for all the patterns
of a ``matches`` clause, parsed
versions and timestamps, and a single min or max for ordered comparisons,
since "any value matches" for ``lt`` is just "less than the largest").

Semantics shared by every operator: an absent (or null) attribute never
matches, even negated; a list attribute matches when any element does;
``negate`` inverts the result otherwise; a value of the wrong type (a number
for ``starts_with``, a string for ``lt``) simply does not match, and neither
does a string longer than ``MAX_STRING_ATTRIBUTE`` for the string operators,
which bounds the cost of a clause whatever the context.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol

from flagwire.core.limits import MAX_STRING_ATTRIBUTE
from flagwire.core.operators import (
    NUMBER_OPS,
    compile_matcher,
    is_number,
    parse_semver,
    parse_timestamp,
)

if TYPE_CHECKING:
    from flagwire.core.detail import EvaluationDetail

__all__ = [
    "DOUBLE_EXPRS",
    "FAST_EXPRS",
    "FAST_GLOBALS",
    "Clause",
    "CompiledSegment",
    "Env",
    "MalformedError",
    "compile_clause",
    "fast_parts",
    "match_all",
]


class Env(Protocol):
    """What compiled code needs from the snapshot it runs in."""

    def segment(self, key: str) -> CompiledSegment | None: ...

    def prerequisite(
        self,
        key: str,
        ctx: Mapping[str, Any],
        ckey: str,
        chain: tuple[str, ...],
        transitive: bool = True,
    ) -> EvaluationDetail | None: ...


Clause = Callable[[Mapping[str, Any], Env], bool]
Test = Callable[[Any], bool]
CompiledSegment = Callable[[Mapping[str, Any], Env], bool]


class MalformedError(Exception):
    """Raised inside evaluation when a flag or a segment it uses failed validation."""


def _lift(attr: str, test: Test, negate: bool) -> Clause:
    """A clause from a per-value test: missing never matches, lists match on any element."""

    def clause(ctx: Mapping[str, Any], env: Env) -> bool:
        v = ctx.get(attr)
        if v is None:
            return False
        if v.__class__ is list or v.__class__ is tuple:
            for x in v:
                if test(x):
                    return not negate
            return negate
        return test(v) is not negate

    return clause


# The common cases — a string attribute for the string, semver and date
# operators, a number for the numeric ones — are inlined so a clause costs one
# call (and none at all inside a generated flag function, see ``_compile``).
# The factories are generated from the fixed templates below; no document
# data ever reaches exec.  Writing out two dozen near-identical closures by
# hand would be worse to read and to review.
_STR: Final = "{v}.__class__ is str"
_NUM: Final = "({v}.__class__ is int or v.__class__ is float)"

#: ``op: (guard, expression)`` for an attribute value ``v`` and prepared value
#: ``arg``; ``{v}`` in the guard is the first use of the attribute.
FAST_EXPRS: Final = {
    "in": (_STR, "v in arg"),
    "starts_with": (_STR, "len(v) <= CAP and v.startswith(arg)"),
    "ends_with": (_STR, "len(v) <= CAP and v.endswith(arg)"),
    "contains": (_STR, "len(v) <= CAP and arg in v"),  # single value
    "matches": (_STR, "len(v) <= CAP and arg(v)"),  # arg: compile_matcher(values)
    "lt": (_NUM, "v < arg"),  # arg: the largest value
    "lte": (_NUM, "v <= arg"),
    "gt": (_NUM, "v > arg"),  # arg: the smallest value
    "gte": (_NUM, "v >= arg"),
    "before": (_STR, "(k := stamp(v)) is not None and k < arg"),
    "after": (_STR, "(k := stamp(v)) is not None and k > arg"),
    "semver_eq": (_STR, "semver(v) in arg"),
    "semver_lt": (_STR, "(k := semver(v)) is not None and k < arg"),
    "semver_gt": (_STR, "(k := semver(v)) is not None and k > arg"),
}

#: The numeric comparisons with LaunchDarkly semantics: both sides as doubles
#: (``arg`` is already one).  An integer beyond any double raises OverflowError,
#: an ERROR for the evaluation, as in LaunchDarkly's SDK.
DOUBLE_EXPRS: Final = {
    "lt": (_NUM, "float(v) < arg"),
    "lte": (_NUM, "float(v) <= arg"),
    "gt": (_NUM, "float(v) > arg"),
    "gte": (_NUM, "float(v) >= arg"),
}

# Attribute values are parsed per call; app versions and timestamps repeat a
# lot, so the parse of a string is cached (bounded; a hit allocates nothing).
#: Names the fast expressions use besides ``v``, ``k`` and ``arg``.
FAST_GLOBALS: Final[dict[str, Any]] = {
    "CAP": MAX_STRING_ATTRIBUTE,
    "semver": functools.lru_cache(maxsize=4096)(parse_semver),
    "stamp": functools.lru_cache(maxsize=4096)(parse_timestamp),
}

_FAST_TEMPLATE: Final = """
def factory(attr, arg, slow):
    def clause(ctx, env):
        v = ctx.get(attr)
        if {guard}:
            return {expr}
        return v is not None and slow(ctx, env)
    return clause
"""


def _make_fast(guard: str, expr: str) -> Callable[[str, Any, Clause], Clause]:
    namespace: dict[str, Any] = dict(FAST_GLOBALS)
    exec(_FAST_TEMPLATE.format(guard=guard.format(v="v"), expr=expr), namespace)
    factory: Callable[[str, Any, Clause], Clause] = namespace["factory"]
    return factory


_FAST: Final = {
    (op, negate, doubles): _make_fast(guard, f"not ({expr})" if negate else expr)
    for doubles, exprs in ((False, FAST_EXPRS), (True, DOUBLE_EXPRS))
    for op, (guard, expr) in exprs.items()
    for negate in (False, True)
}


def fast_parts(c: dict[str, Any], *, doubles: bool = False) -> tuple[str, Any, Clause] | None:
    """``(attribute, arg, slow)`` when clause ``c`` has an inline fast path.

    ``arg`` is the prepared value used by ``FAST_EXPRS[op]``; ``slow`` is the
    full clause, to call when the attribute's type is not the common one.
    ``doubles`` (LaunchDarkly semantics): numbers compare as doubles, with the
    expressions of ``DOUBLE_EXPRS`` (``v < arg`` is exact for integers past 2**53).
    """
    op: str = c["op"]
    values: list[Any] = c["values"]
    arg: Any
    if doubles and op in NUMBER_OPS:
        arg = float(max(values) if op in ("lt", "lte") else min(values))  # float() is monotonic
        return c["attribute"], arg, _lift(c["attribute"], _DOUBLE_TESTS[op](values), c["negate"])
    if op == "in":
        arg = frozenset(v for v in values if isinstance(v, str))
    elif op in ("starts_with", "ends_with"):
        arg = tuple(values)
    elif op == "contains" and len(values) == 1:
        arg = values[0]
    elif op == "matches":
        arg = compile_matcher(values)
    elif op in ("lt", "lte"):
        arg = max(values)
    elif op in ("gt", "gte"):
        arg = min(values)
    elif op in ("before", "after"):
        stamps = [parse_timestamp(v) for v in values]
        arg = max(stamps) if op == "before" else min(stamps)  # type: ignore[type-var]
    elif op == "semver_eq":
        arg = frozenset(parse_semver(v) for v in values)
    elif op in ("semver_lt", "semver_gt"):
        versions = [parse_semver(v) for v in values]
        arg = max(versions) if op == "semver_lt" else min(versions)  # type: ignore[type-var]
    else:
        return None
    return c["attribute"], arg, _lift(c["attribute"], _TESTS[op](values), c["negate"])


def compile_clause(c: dict[str, Any], *, doubles: bool = False) -> Clause:
    """Compile one validated clause (``doubles``: numbers compared as LaunchDarkly does)."""
    if c["op"] == "segment_match":
        return _segment_clause(tuple(c["values"]), c["negate"])
    fast = fast_parts(c, doubles=doubles)
    if fast is None:
        return _lift(c["attribute"], _TESTS[c["op"]](c["values"]), c["negate"])
    return _FAST[c["op"], c["negate"], doubles and c["op"] in NUMBER_OPS](*fast)


def match_all(clauses: tuple[Clause, ...]) -> Clause:
    """One callable for a rule: its single clause itself, or all of them in order."""
    if len(clauses) == 1:
        return clauses[0]
    if len(clauses) == 2:
        first, second = clauses
        return lambda ctx, env: first(ctx, env) and second(ctx, env)

    def match(ctx: Mapping[str, Any], env: Env) -> bool:
        for clause in clauses:  # noqa: SIM110 - a loop beats all(<genexpr>) on CPython
            if not clause(ctx, env):
                return False
        return True

    return match


def _starts(prefixes: tuple[str, ...]) -> Test:
    return lambda s: s.startswith(prefixes)


def _ends(suffixes: tuple[str, ...]) -> Test:
    return lambda s: s.endswith(suffixes)


def _segment_clause(keys: tuple[str, ...], negate: bool) -> Clause:
    def clause(ctx: Mapping[str, Any], env: Env) -> bool:
        for k in keys:
            seg = env.segment(k)
            if seg is not None and seg(ctx, env):
                return not negate
        return negate

    return clause


def _in(values: list[Any]) -> Test:
    strs = frozenset(v for v in values if isinstance(v, str))
    nums = frozenset(v for v in values if is_number(v))
    bools = frozenset(v for v in values if v is True or v is False)

    def test(x: Any) -> bool:
        cls = x.__class__
        if cls is str:
            return x in strs
        if cls is bool:
            return x in bools
        if cls is int or cls is float:
            return x in nums
        return False

    return test


def _string_test(check: Callable[[str], bool]) -> Test:
    return lambda x: x.__class__ is str and len(x) <= MAX_STRING_ATTRIBUTE and check(x)


def _contains(values: list[Any]) -> Test:
    subs = tuple(values)
    return _string_test(lambda s: any(sub in s for sub in subs))


def _matches(values: list[Any]) -> Test:
    return _string_test(compile_matcher(values))


def _ordered(parse: Callable[[Any], Any], op: str, values: list[Any]) -> Test:
    """lt/lte/gt/gte/before/after/semver: any value matching = one min or max comparison."""
    keys = [parse(v) for v in values]
    hi, lo = max(keys), min(keys)
    compare: Callable[[Any], bool] = {
        "lt": lambda k: k < hi,
        "lte": lambda k: k <= hi,
        "gt": lambda k: k > lo,
        "gte": lambda k: k >= lo,
    }[op]

    def test(x: Any) -> bool:
        k = parse(x)
        return k is not None and compare(k)

    return test


def _number(x: Any) -> Any:
    # Any int or float but bool; NaN then compares false, infinities compare
    # as usual (only clause *values* must be finite).
    return x if x.__class__ is int or x.__class__ is float else None


def _double(x: Any) -> float | None:
    """A number as the double LaunchDarkly compares (2**53 + 1 equals 2**53 there).

    An integer beyond any double raises OverflowError, as in LaunchDarkly's SDK.
    """
    return float(x) if x.__class__ is int or x.__class__ is float else None


def _semver_eq(values: list[Any]) -> Test:
    keys = frozenset(parse_semver(v) for v in values)

    def test(x: Any) -> bool:
        k = parse_semver(x)
        return k is not None and k in keys

    return test


_TESTS: Final[dict[str, Callable[[list[Any]], Test]]] = {
    "in": _in,
    "starts_with": lambda vs: _string_test(_starts(tuple(vs))),
    "ends_with": lambda vs: _string_test(_ends(tuple(vs))),
    "contains": _contains,
    "matches": _matches,
    "lt": lambda vs: _ordered(_number, "lt", vs),
    "lte": lambda vs: _ordered(_number, "lte", vs),
    "gt": lambda vs: _ordered(_number, "gt", vs),
    "gte": lambda vs: _ordered(_number, "gte", vs),
    "before": lambda vs: _ordered(parse_timestamp, "lt", vs),
    "after": lambda vs: _ordered(parse_timestamp, "gt", vs),
    "semver_eq": _semver_eq,
    "semver_lt": lambda vs: _ordered(parse_semver, "lt", vs),
    "semver_gt": lambda vs: _ordered(parse_semver, "gt", vs),
}


def _doubles(op: str) -> Callable[[list[Any]], Test]:
    return lambda vs: _ordered(_double, op, [float(v) for v in vs])


_DOUBLE_TESTS: Final = {op: _doubles(op) for op in NUMBER_OPS}
