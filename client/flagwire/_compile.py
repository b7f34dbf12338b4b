"""Compile validated flag and segment documents into fast evaluation closures.

Everything that can be decided when a flag is loaded is decided here:
target lists become one dict from context key to a prebuilt
:class:`EvaluationDetail`; ``in`` values become frozensets; regexes,
versions and timestamps are parsed; ``starts_with`` gets a tuple so one
``str.startswith`` call tests every prefix; numeric and ordered comparisons
against many values collapse to one comparison with their min or max; and
every detail the flag can return (per off, target, rule, fallthrough and
rollout slot) is built once.  A hot evaluation therefore allocates nothing;
only a rollout hashes per call.

Clauses take ``(context, env)``; ``env`` is the snapshot, consulted only by
``segment_match`` (segments are looked up at evaluation time, so replacing a
segment never recompiles flags) and by prerequisites.
"""

from __future__ import annotations

import hashlib
import re
import struct
from bisect import bisect_right
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

from ._bucketing import BUCKETS, bucket_text
from ._detail import EvaluationDetail, Reason
from ._errors import ValidationError
from ._model import validate_flag, validate_segment
from ._operators import is_number, parse_semver, parse_timestamp

__all__ = [
    "USE_DEFAULT",
    "CompiledFlag",
    "CompiledSegment",
    "CycleError",
    "Env",
    "MalformedError",
    "compile_flag",
    "compile_segment",
    "malformed_flag",
]


class Env(Protocol):
    """What compiled code needs from the snapshot it runs in."""

    def segment(self, key: str) -> CompiledSegment | None: ...

    def prerequisite(
        self, key: str, ctx: Mapping[str, Any], ckey: str, chain: tuple[str, ...]
    ) -> EvaluationDetail | None: ...


Clause = Callable[[Mapping[str, Any], Env], bool]
Test = Callable[[Any], bool]
Runner = Callable[[Mapping[str, Any], str, Env, tuple[str, ...]], EvaluationDetail]


class MalformedError(Exception):
    """Raised inside evaluation when a flag or a segment it uses failed validation."""


class CycleError(Exception):
    """Prerequisites loop back to a flag already being evaluated (or nest too deep)."""


class _Default:
    """Marker value: serve the caller's default (an off flag with no off_variation)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<caller's default>"


#: ``EvaluationDetail.value`` of prebuilt details that stand for the caller's default.
USE_DEFAULT: Final[Any] = _Default()

_KIND_TYPES: Final[dict[str, frozenset[type]]] = {
    "bool": frozenset({bool}),
    "string": frozenset({str}),
    "number": frozenset({float, int}),
    "json": frozenset({dict, list}),
}


class _Anything(frozenset[type]):
    """``accepts`` of a malformed flag: any kind passes, so the caller sees MALFORMED_FLAG."""

    def __contains__(self, item: object) -> bool:
        return True


class CompiledFlag:
    """A flag ready to evaluate: ``run(ctx, ckey, env, chain)`` and the kinds it serves."""

    __slots__ = ("accepts", "key", "on", "run")

    def __init__(self, key: str, accepts: frozenset[type], on: bool, run: Runner) -> None:
        self.key = key
        self.accepts = accepts  # the ``kind`` arguments of evaluate() it satisfies
        self.on = on
        self.run = run


CompiledSegment = Callable[[Mapping[str, Any], Env], bool]


def compile_flag(doc: Any) -> CompiledFlag:
    """Validate and compile one flag document; an invalid one becomes a malformed flag."""
    try:
        d = validate_flag(doc)
    except ValidationError as exc:
        key = doc.get("key") if isinstance(doc, dict) else None
        return malformed_flag(key if isinstance(key, str) else "", str(exc))
    return _compile_valid_flag(d)


def malformed_flag(key: str, why: str) -> CompiledFlag:
    """A flag that answers MALFORMED_FLAG to every evaluation (``why`` is kept for debugging)."""

    def run(ctx: Mapping[str, Any], ckey: str, env: Env,
            chain: tuple[str, ...]) -> EvaluationDetail:
        raise MalformedError(why)

    return CompiledFlag(key, _Anything(), False, run)


def _compile_valid_flag(d: dict[str, Any]) -> CompiledFlag:
    key: str = d["key"]
    variations: list[Any] = d["variations"]
    off_index: int | None = d["off_variation"]
    off_value = USE_DEFAULT if off_index is None else variations[off_index]

    def detail(index: int, reason: Reason, **kw: Any) -> EvaluationDetail:
        return EvaluationDetail(variations[index], index, reason, **kw)

    off = EvaluationDetail(off_value, off_index, Reason.OFF)
    prereqs = tuple(
        (p["key"], p["variation"], EvaluationDetail(
            off_value, off_index, Reason.PREREQUISITE_FAILED, prerequisite_key=p["key"]))
        for p in d["prerequisites"]
    )
    target_map: dict[str, EvaluationDetail] = {}
    for t in d["targets"]:
        found = detail(t["variation"], Reason.TARGET_MATCH)
        for value in t["values"]:
            target_map.setdefault(value, found)  # the first target listing a key wins
    targets = target_map or None
    rules = tuple(
        (_all(tuple(_clause(c) for c in r["clauses"])),
         *_serve(r, key, d["salt"], variations, Reason.RULE_MATCH, index=i, rule_id=r.get("id")))
        for i, r in enumerate(d["rules"])
    )
    ft_detail, ft_roll = _serve(d["fallthrough"], key, d["salt"], variations, Reason.FALLTHROUGH)
    on: bool = d["on"]
    prerequisite_failed = _prerequisite_check(key, prereqs)

    def run(ctx: Mapping[str, Any], ckey: str, env: Env,
            chain: tuple[str, ...]) -> EvaluationDetail:
        if not on:
            return off
        if prereqs:
            failed = prerequisite_failed(ctx, ckey, env, chain)
            if failed is not None:
                return failed
        if targets:
            hit = targets.get(ckey)
            if hit is not None:
                return hit
        for match, fixed, roll in rules:
            if match(ctx, env):
                return fixed if roll is None else roll(ctx, ckey)
        return ft_detail if ft_roll is None else ft_roll(ctx, ckey)

    kind = "bool" if variations[0] is True or variations[0] is False else (
        "string" if isinstance(variations[0], str) else
        "number" if is_number(variations[0]) else "json")
    return CompiledFlag(key, _KIND_TYPES[kind], on, run)


def _prerequisite_check(
    key: str, prereqs: tuple[tuple[str, int, EvaluationDetail], ...]
) -> Callable[[Mapping[str, Any], str, Env, tuple[str, ...]], EvaluationDetail | None]:
    def failed(ctx: Mapping[str, Any], ckey: str, env: Env,
               chain: tuple[str, ...]) -> EvaluationDetail | None:
        chain = (*chain, key)
        for pkey, pvar, fail in prereqs:
            got = env.prerequisite(pkey, ctx, ckey, chain)
            if got is None or got.variation_index != pvar:
                return fail
        return None

    return failed


_Q: Final = struct.Struct(">Q").unpack_from
_sha1: Final = hashlib.sha1


def _serve(
    obj: dict[str, Any], key: str, salt: str, variations: list[Any], reason: Reason,
    *, index: int | None = None, rule_id: str | None = None,
) -> tuple[EvaluationDetail, Callable[[Mapping[str, Any], str], EvaluationDetail] | None]:
    """Prebuilt detail for a fixed variation, or a rollout closure over prebuilt details.

    (For a rollout the first element is just its first slot's detail, so that
    the pair has one shape; callers use it only when the closure is None.)
    """
    extra: dict[str, Any] = {} if index is None else {"rule_index": index, "rule_id": rule_id}
    if "variation" in obj:
        v = obj["variation"]
        return EvaluationDetail(variations[v], v, reason, **extra), None
    roll = obj["rollout"]
    slots = roll["variations"]
    details = tuple(EvaluationDetail(variations[s["variation"]], s["variation"], reason, **extra)
                    for s in slots)
    cumulative, total = [], 0
    for s in slots:
        total += s["weight"]
        cumulative.append(total)
    cum = tuple(cumulative)
    base = _sha1(f"{salt}.".encode("utf-8", "surrogatepass"), usedforsecurity=False)
    copy = base.copy
    by: str | None = None if roll["bucket_by"] == "key" else roll["bucket_by"]

    def pick(ctx: Mapping[str, Any], ckey: str) -> EvaluationDetail:
        if by is None:
            text = ckey
        else:
            found = bucket_text(ctx.get(by))
            # an unbucketable or missing attribute falls back to the context key
            text = ckey if found is None else found
        h = copy()
        try:
            h.update(text.encode())
        except UnicodeEncodeError:  # a lone surrogate: see _bucketing.bucket
            h.update(text.encode("utf-8", "surrogatepass"))
        return details[bisect_right(cum, _Q(h.digest())[0] % BUCKETS)]

    return details[0], pick


# --- clauses ---------------------------------------------------------------


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


# The common case, a plain string attribute, is inlined into one closure per
# operator so a clause costs one call.  The factories are generated from the
# fixed templates below (no document data ever reaches exec): writing out
# ten near-identical closures by hand would be worse to read and to review.
_FAST_TEMPLATE: Final = """
def factory(attr, arg, slow):
    def clause(ctx, env):
        v = ctx.get(attr)
        if v.__class__ is str:
            return {expr}
        return slow(ctx, env)
    return clause
"""
_FAST_EXPRS: Final = {
    "in": "v in arg",
    "starts_with": "v.startswith(arg)",
    "ends_with": "v.endswith(arg)",
    "contains": "arg in v",  # single value
    "matches": "arg(v) is not None",  # single value; arg is pattern.search
}


def _make_fast(expr: str) -> Callable[[str, Any, Clause], Clause]:
    namespace: dict[str, Any] = {}
    exec(_FAST_TEMPLATE.format(expr=expr), namespace)
    factory: Callable[[str, Any, Clause], Clause] = namespace["factory"]
    return factory


_FAST: Final = {
    (op, negate): _make_fast(f"not ({expr})" if negate else expr)
    for op, expr in _FAST_EXPRS.items()
    for negate in (False, True)
}


def _clause(c: dict[str, Any]) -> Clause:
    op: str = c["op"]
    values: list[Any] = c["values"]
    negate: bool = c["negate"]
    if op == "segment_match":
        return _segment_clause(tuple(values), negate)
    attr: str = c["attribute"]
    slow = _lift(attr, _TESTS[op](values), negate)
    arg: Any
    if op == "in":
        arg = frozenset(v for v in values if isinstance(v, str))
    elif op in ("starts_with", "ends_with"):
        arg = tuple(values)
    elif op == "contains" and len(values) == 1:
        arg = values[0]
    elif op == "matches" and len(values) == 1:
        arg = re.compile(values[0]).search
    else:
        return slow
    return _FAST[op, negate](attr, arg, slow)


def _all(clauses: tuple[Clause, ...]) -> Clause:
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
    return lambda x: x.__class__ is str and check(x)


def _contains(values: list[Any]) -> Test:
    subs = tuple(values)
    return _string_test(lambda s: any(sub in s for sub in subs))


def _matches(values: list[Any]) -> Test:
    searches = tuple(re.compile(v).search for v in values)
    return _string_test(lambda s: any(search(s) is not None for search in searches))


def _ordered(parse: Callable[[Any], Any], op: str, values: list[Any]) -> Test:
    """lt/lte/gt/gte/before/after/semver: any value matching = one min or max comparison."""
    keys = [parse(v) for v in values]
    hi, lo = max(keys), min(keys)
    compare: Callable[[Any], bool] = {
        "lt": lambda k: k < hi, "lte": lambda k: k <= hi,
        "gt": lambda k: k > lo, "gte": lambda k: k >= lo,
    }[op]

    def test(x: Any) -> bool:
        k = parse(x)
        return k is not None and compare(k)

    return test


def _number(x: Any) -> Any:
    return x if is_number(x) else None


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


# --- segments --------------------------------------------------------------


def compile_segment(doc: Any) -> CompiledSegment:
    """Validate and compile a segment: ``seg(ctx, env)`` says whether ctx is a member.

    A segment that fails validation raises :class:`MalformedError` when a
    flag consults it, so that flag answers MALFORMED_FLAG rather than
    silently treating everyone as outside.
    """
    try:
        d = validate_segment(doc)
    except ValidationError as exc:
        why = str(exc)

        def malformed(ctx: Mapping[str, Any], env: Env) -> bool:
            raise MalformedError(why)

        return malformed
    excluded = frozenset(d["excluded"])
    included = frozenset(d["included"])
    rules = tuple(_all(tuple(_clause(c) for c in r["clauses"])) for r in d["rules"])

    def member(ctx: Mapping[str, Any], env: Env) -> bool:
        ckey = ctx.get("key")
        if ckey in excluded:
            return False
        if ckey in included:
            return True
        for match in rules:  # noqa: SIM110 - a loop beats any(<genexpr>) on CPython
            if match(ctx, env):
                return True
        return False

    return member
