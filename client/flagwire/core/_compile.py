"""Compile a validated flag document into a function shared by its shape and the flag's values.

Everything that can be decided when a flag is loaded is decided here, so
that evaluation parses nothing and allocates nothing:

- every :class:`EvaluationDetail` the flag can return (off, each prerequisite
  failure, each target, each rule or rule rollout slot, the fallthrough) is
  built once and returned as is;
- the target lists become one set of context keys per variation served;
- clause values are prepared by ``_clauses`` (sets, tuples, regexes, parsed
  versions and timestamps);
- the flag's decision procedure is generated as the source of one function
  with the rules unrolled and the common clause shapes inlined (a string
  attribute for the string, date and version operators, a number for the
  numeric ones; see ``_clauses.FAST_EXPRS``), which saves a Python call per
  clause and per rule.  Flags with more than ``_INLINE_CLAUSES`` clauses run
  their rules as a loop over closures instead: compiling thousands of inlined
  clauses would cost more than it could save.

Safety of the generated code: the source depends only on the *shape* of the
flag (how many rules, which operators, rollout or not); every value from the
document — attribute names, clause values, details — is read by position from
the flag's values ``p`` (attributes ``p.v00``... then ``p.rest[i]``), never
written into the source.  The compiled function is therefore cached per shape
and shared by all flags of that shape.

One function per shape, the values in slots of the flag's own entry
(``_flags.FlagEntry``, which the snapshot's lookup reaches anyway), rather
than a closure per flag (issue 16): a call on a flag cold in the caches then
touches one object of its own instead of a function, its closure tuple and a
cell per value, each a cache and TLB miss when thousands of flags are
evaluated in turn.
"""

from __future__ import annotations

import functools
from bisect import bisect_right
from collections.abc import Callable, Mapping
from typing import Any, Final

from flagwire.core._clauses import (
    DOUBLE_EXPRS,
    FAST_EXPRS,
    FAST_GLOBALS,
    Env,
    MalformedError,
    compile_clause,
    fast_parts,
    match_all,
)
from flagwire.core._intern import shared
from flagwire.core._serve import Q, rollout_parts, serve_parts
from flagwire.core.detail import EvaluationDetail, Reason
from flagwire.core.errors import ValidationError
from flagwire.core.limits import BUCKETS
from flagwire.core.model import LAUNCHDARKLY, semantics_of, validate_flag
from flagwire.core.operators import is_number

__all__ = [
    "SLOTS",
    "USE_DEFAULT",
    "CompiledFlag",
    "CycleError",
    "compile_flag",
    "malformed_flag",
]

#: ``run(p, ctx, ckey, env, chain)``: shared by the flags of one shape; ``p`` holds the
#: flag's values as attributes ``SLOTS`` (then a tuple ``rest``): its ``FlagEntry``.
Runner = Callable[[Any, Mapping[str, Any], str, Env, tuple[str, ...]], EvaluationDetail]

#: The attributes holding a flag's first values; any more are in ``rest``.
SLOTS: Final = tuple(f"v{i:02}" for i in range(16))


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
    """A flag ready to evaluate: ``run``, its values ``args`` and the kinds it serves.

    ``run(p, ctx, ckey, env, chain)`` reads ``args`` from ``p`` as laid out
    by :data:`SLOTS`.  It returns a prebuilt detail; one whose value is
    :data:`USE_DEFAULT` means "the caller's default" (an off flag without an
    off variation).
    """

    __slots__ = ("accepts", "args", "key", "on", "run")

    def __init__(
        self, key: str, accepts: frozenset[type], on: bool, run: Runner, args: tuple[Any, ...]
    ) -> None:
        self.key = key
        self.accepts = accepts  # the ``kind`` arguments of evaluate() it satisfies
        self.on = on
        self.run = run
        self.args: tuple[Any, ...] = args


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
    return CompiledFlag(key, _Anything(), False, _malformed, (why,))


def _malformed(
    p: Any, ctx: Mapping[str, Any], ckey: str, env: Env, chain: tuple[str, ...]
) -> EvaluationDetail:
    raise MalformedError(p.v00)


def _constant(
    p: Any, ctx: Mapping[str, Any], ckey: str, env: Env, chain: tuple[str, ...]
) -> EvaluationDetail:
    detail: EvaluationDetail = p.v00
    return detail


def _kind(value: Any) -> str:
    if value is True or value is False:
        return "bool"
    if isinstance(value, str):
        return "string"
    return "number" if is_number(value) else "json"


def _compile_valid_flag(d: dict[str, Any]) -> CompiledFlag:
    key: str = d["key"]
    variations: list[Any] = d["variations"]
    off_index: int | None = d["off_variation"]
    off_value = USE_DEFAULT if off_index is None else variations[off_index]
    accepts = _KIND_TYPES[_kind(variations[0])]
    off = EvaluationDetail(off_value, off_index, Reason.OFF)
    if not d["on"]:
        return CompiledFlag(key, accepts, False, _constant, (off,))

    ld = semantics_of(d) == LAUNCHDARKLY
    gen = _Generator(ld)
    if d["prerequisites"]:
        prereqs = tuple(
            (
                p["key"],
                p["variation"],
                EvaluationDetail(
                    off_value, off_index, Reason.PREREQUISITE_FAILED, prerequisite_key=p["key"]
                ),
            )
            for p in d["prerequisites"]
        )
        check = gen.bind(_prerequisite_check(key, prereqs, transitive=not ld))
        gen.line(f"failed = {check}(ctx, ckey, env, chain)")
        gen.line("if failed is not None: return failed")
    # The context keys each variation is targeted to, as one set per variation:
    # a set answers "not targeted" from within itself (a dict reaches a second
    # object, its table, which is one more cache miss on a cold flag), and equal
    # sets are shared between flags.
    targeted: dict[int, set[str]] = {}
    seen: set[str] = set()
    for t in d["targets"]:
        keys = targeted.setdefault(t["variation"], set())
        for value in t["values"]:
            if value not in seen:  # the first target listing a key wins
                seen.add(value)
                keys.add(value)
    for index, keys in targeted.items():
        if keys:
            found = EvaluationDetail(variations[index], index, Reason.TARGET_MATCH)
            gen.line(f"if ckey in {gen.bind(frozenset(keys))}: return {gen.bind(found)}")
    if sum(len(r["clauses"]) for r in d["rules"]) <= _INLINE_CLAUSES:
        for i, r in enumerate(d["rules"]):
            condition = " and ".join(gen.clause(c) for c in r["clauses"])
            gen.line(f"if {condition}:")
            gen.serve(r, d["salt"], variations, Reason.RULE_MATCH, i, r.get("id"), indent=1)
    else:
        # A huge flag: compiling thousands of inlined clauses would take longer
        # than it could ever save, so its rules run as a loop over closures.
        table = tuple(
            (
                match_all(tuple(compile_clause(c, doubles=ld) for c in r["clauses"])),
                *serve_parts(r, d["salt"], variations, Reason.RULE_MATCH, i, r.get("id"), ld),
            )
            for i, r in enumerate(d["rules"])
        )
        gen.line(f"for match, fixed, pick in {gen.bind(table)}:")
        gen.line("if match(ctx, env):", 1)
        gen.line("return fixed if pick is None else pick(ctx, ckey)", 2)
    gen.serve(d["fallthrough"], d["salt"], variations, Reason.FALLTHROUGH, None, None, indent=0)
    return CompiledFlag(key, accepts, True, *gen.build())


def _prerequisite_check(
    key: str, prereqs: tuple[tuple[str, int, EvaluationDetail], ...], *, transitive: bool
) -> Callable[[Mapping[str, Any], str, Env, tuple[str, ...]], EvaluationDetail | None]:
    """The first failing prerequisite's detail, or None when all are satisfied.

    ``transitive`` False is LaunchDarkly's rule: a prerequisite that failed its
    own prerequisites still counts when it is on and the off variation it then
    serves is the one required.
    """

    alone = (key,)  # the chain when this flag is the one being evaluated: no allocation

    def failed(
        ctx: Mapping[str, Any], ckey: str, env: Env, chain: tuple[str, ...]
    ) -> EvaluationDetail | None:
        chain = (*chain, key) if chain else alone
        for pkey, pvar, fail in prereqs:
            got = env.prerequisite(pkey, ctx, ckey, chain, transitive)
            if got is None or got.variation_index != pvar:
                return fail
        return None

    return failed


#: Flags with more clauses than this run their rules as a loop (see above).
_INLINE_CLAUSES: Final = 128


class _Generator:
    """Accumulates the source of one flag's ``run`` and the values it closes over."""

    def __init__(self, ld: bool = False) -> None:
        self.lines: list[str] = []
        self.values: list[Any] = []
        self.ld = ld  # LaunchDarkly semantics: its bucketing, numbers as doubles

    def bind(self, value: Any) -> str:
        """An expression for ``value`` inside the generated function (by position only)."""
        self.values.append(shared(value))  # equal values: one warm object (``_intern``)
        i = len(self.values) - 1
        return f"p.{SLOTS[i]}" if i < len(SLOTS) else f"p.rest[{i - len(SLOTS)}]"

    def line(self, text: str, indent: int = 0) -> None:
        self.lines.append("    " * (indent + 1) + text)

    def clause(self, c: dict[str, Any]) -> str:
        """A boolean expression for clause ``c``: inlined when a fast path exists."""
        fast = fast_parts(c, doubles=self.ld)
        if fast is None:
            return f"{self.bind(compile_clause(c, doubles=self.ld))}(ctx, env)"
        attr, arg, slow = (self.bind(x) for x in fast)
        exprs = DOUBLE_EXPRS if self.ld and c["op"] in DOUBLE_EXPRS else FAST_EXPRS
        guard, expr = exprs[c["op"]]
        expr = expr.replace("arg", arg)
        if c["negate"]:
            expr = f"not ({expr})"
        guard = guard.format(v=f"(v := ctx.get({attr}))")
        # (a missing attribute never matches: skip the call to the general code)
        return f"(({expr}) if {guard} else (v is not None and {slow}(ctx, env)))"

    def serve(
        self,
        obj: dict[str, Any],
        salt: str,
        variations: list[Any],
        reason: Reason,
        index: int | None,
        rule_id: str | None,
        *,
        indent: int,
    ) -> None:
        if self.ld or "variation" in obj or obj["rollout"]["bucket_by"] != "key":
            fixed, pick = serve_parts(obj, salt, variations, reason, index, rule_id, self.ld)
            if pick is None:
                self.line(f"return {self.bind(fixed)}", indent)
            else:
                self.line(f"return {self.bind(pick)}(ctx, ckey)", indent)
            return
        # Bucketing by the context key (the usual case) is inlined: see _bucketing.
        base, cumulative, details = rollout_parts(
            obj["rollout"], salt, variations, reason, index, rule_id
        )
        self.line(f"h = {self.bind(base)}.copy()", indent)
        self.line("try: h.update(ckey.encode())", indent)
        self.line(
            "except UnicodeEncodeError: h.update(ckey.encode('utf-8', 'surrogatepass'))", indent
        )
        if len(details) > 4:
            cum, dets = self.bind(cumulative), self.bind(details)
            self.line(f"return {dets}[bisect_right({cum}, Q(h.digest())[0] % {BUCKETS})]", indent)
            return
        # A few slots: comparisons in a row beat a call to bisect (same answer:
        # the first slot whose running total exceeds the bucket).
        self.line(f"b = Q(h.digest())[0] % {BUCKETS}", indent)
        for total, detail in zip(cumulative[:-1], details[:-1], strict=True):
            self.line(f"if b < {self.bind(total)}: return {self.bind(detail)}", indent)
        self.line(f"return {self.bind(details[-1])}", indent)

    def build(self) -> tuple[Runner, tuple[Any, ...]]:
        """The shape's shared function and this flag's argument tuple."""
        body = "\n".join(self.lines)
        return _runner(f"def run(p, ctx, ckey, env, chain):\n{body}\n"), tuple(self.values)


@functools.lru_cache(maxsize=512)
def _runner(source: str) -> Runner:
    """Compile the source of one flag shape; shared by every flag of that shape."""
    namespace: dict[str, Any] = {"bisect_right": bisect_right, "Q": Q, **FAST_GLOBALS}
    exec(compile(source, "<flagwire flag>", "exec"), namespace)
    runner: Runner = namespace["run"]
    return runner
