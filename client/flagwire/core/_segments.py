"""Segment compilation: ``seg(ctx, env)`` says whether a context is a member.

Split from ``_clauses.py`` (issue 11): a segment is a document of its own
(included and excluded keys, rules, LaunchDarkly's weighted rules) built from
the same compiled clauses as a flag's rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flagwire.core._clauses import CompiledSegment, Env, MalformedError, compile_clause, match_all
from flagwire.core.bucketing import launchdarkly_bucket
from flagwire.core.errors import ValidationError
from flagwire.core.limits import WEIGHT_TOTAL
from flagwire.core.model import LAUNCHDARKLY, semantics_of, validate_segment

__all__ = ["CompiledSegment", "compile_segment"]


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
    if semantics_of(d) == LAUNCHDARKLY:
        return _launchdarkly_segment(d, included, excluded)
    rules = tuple(match_all(tuple(compile_clause(c) for c in r["clauses"])) for r in d["rules"])

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


def _launchdarkly_segment(
    d: dict[str, Any], included: frozenset[str], excluded: frozenset[str]
) -> CompiledSegment:
    """A segment with LaunchDarkly's rules: included wins over excluded; weighted rules.

    A rule with a ``weight`` holds only the contexts whose LaunchDarkly bucket
    (``salt.value`` of its ``bucket_by``, default the key) is below
    ``weight / 100000``.
    """
    prefix: str = d.get("salt", d["key"])
    rules = tuple(
        (
            match_all(tuple(compile_clause(c, doubles=True) for c in r["clauses"])),
            r.get("weight"),
            r.get("bucket_by", "key"),
        )
        for r in d["rules"]
    )

    def member(ctx: Mapping[str, Any], env: Env) -> bool:
        ckey = ctx.get("key")
        if ckey in included:
            return True
        if ckey in excluded:
            return False
        for match, weight, by in rules:
            if match(ctx, env):
                if weight is None:
                    return True
                value = ckey if by == "key" else ctx.get(by)
                if launchdarkly_bucket(prefix, value) < weight / WEIGHT_TOTAL:
                    return True
        return False

    return member
