"""What a rule or the fallthrough serves: a prebuilt detail, or a rollout that picks one.

Split from ``_compile.py`` (issue 11): bucketing a context into a rollout's
slots (flagwire's and LaunchDarkly's), with the salted hash state computed
once per flag and copied per call.  ``_compile`` inlines the common case
(bucketing by the context key) into the generated flag function from
:func:`rollout_parts`; everything else calls a picker from here.
"""

from __future__ import annotations

import hashlib
import struct
from bisect import bisect_right
from collections.abc import Callable, Mapping
from typing import Any, Final

from flagwire.core.bucketing import LD_SCALE, bucket_text, launchdarkly_bucket_text
from flagwire.core.detail import EvaluationDetail, Reason
from flagwire.core.limits import BUCKETS, WEIGHT_TOTAL

__all__ = ["Picker", "Q", "rollout_parts", "serve_parts"]

Picker = Callable[[Mapping[str, Any], str], EvaluationDetail]

#: The first 8 bytes of a digest as an unsigned integer.
Q: Final = struct.Struct(">Q").unpack_from


def serve_parts(
    obj: dict[str, Any],
    salt: str,
    variations: list[Any],
    reason: Reason,
    index: int | None,
    rule_id: str | None,
    ld: bool = False,
) -> tuple[EvaluationDetail, Picker | None]:
    """What a rule or the fallthrough serves: a prebuilt detail, or a rollout picker.

    For a rollout the detail is just its first slot's, so the pair has one shape.
    """
    if "variation" in obj:
        v = obj["variation"]
        return _detail(variations, v, reason, index, rule_id), None
    if ld:
        roll = obj["rollout"]
        details = tuple(
            _detail(variations, slot["variation"], reason, index, rule_id)
            for slot in roll["variations"]
        )
        prefix = str(roll["seed"]) if "seed" in roll else salt
        return details[0], _launchdarkly_picker(prefix, roll["bucket_by"], roll, details)
    base, cum, details = rollout_parts(obj["rollout"], salt, variations, reason, index, rule_id)
    return details[0], _picker(base, obj["rollout"]["bucket_by"], cum, details)


def _detail(
    variations: list[Any], v: int, reason: Reason, index: int | None, rule_id: str | None
) -> EvaluationDetail:
    if index is None:
        return EvaluationDetail(variations[v], v, reason)
    return EvaluationDetail(variations[v], v, reason, rule_index=index, rule_id=rule_id)


def rollout_parts(
    roll: dict[str, Any],
    salt: str,
    variations: list[Any],
    reason: Reason,
    index: int | None,
    rule_id: str | None,
) -> tuple[Any, tuple[int, ...], tuple[EvaluationDetail, ...]]:
    """The salted hash state, the running totals of the weights and a detail per slot.

    A bucket below ``cum[i]`` (and not below ``cum[i-1]``) gets slot ``i``.
    """
    base = hashlib.sha1(f"{salt}.".encode("utf-8", "surrogatepass"), usedforsecurity=False)
    cumulative, total = [], 0
    for slot in roll["variations"]:
        total += slot["weight"]
        cumulative.append(total)
    details = tuple(
        _detail(variations, slot["variation"], reason, index, rule_id)
        for slot in roll["variations"]
    )
    return base, tuple(cumulative), details


def _picker(
    base: Any, by: str, cum: tuple[int, ...], details: tuple[EvaluationDetail, ...]
) -> Picker:
    """A rollout bucketing by attribute ``by``; an unusable value falls back to the key."""
    copy = base.copy
    attr = None if by == "key" else by

    def pick(ctx: Mapping[str, Any], ckey: str) -> EvaluationDetail:
        found = None if attr is None else bucket_text(ctx.get(attr))
        text = ckey if found is None else found
        h = copy()
        h.update(text.encode("utf-8", "surrogatepass"))
        return details[bisect_right(cum, Q(h.digest())[0] % BUCKETS)]

    return pick


def _launchdarkly_picker(
    prefix: str, by: str, roll: dict[str, Any], details: tuple[EvaluationDetail, ...]
) -> Picker:
    """A rollout assigning as LaunchDarkly does (``bucketing.launchdarkly_bucket``, inlined).

    The running totals are summed in doubles in slot order, as LaunchDarkly
    sums them, so a boundary lands on the same double; a bucket past the last
    total (weights summing under 100%, or rounding) gets the last slot.
    """
    cum: list[float] = []
    total = 0.0
    for slot in roll["variations"]:
        total += slot["weight"] / WEIGHT_TOTAL
        cum.append(total)
    bounds, last, count = tuple(cum), details[-1], len(details)
    # The prefix is hashed once; each call continues from a copy of that state.
    copy = hashlib.sha1(f"{prefix}.".encode("utf-8", "surrogatepass"), usedforsecurity=False).copy
    attr = None if by == "key" else by

    def pick(ctx: Mapping[str, Any], ckey: str) -> EvaluationDetail:
        value = ckey if attr is None else ctx.get(attr)
        if value.__class__ is not str:
            value = launchdarkly_bucket_text(value)
            if value is None:  # bucket 0.0: the first slot with a positive weight
                i = bisect_right(bounds, 0.0)
                return details[i] if i < count else last
        h = copy()
        h.update(value.encode("utf-8", "surrogatepass"))
        i = bisect_right(bounds, (Q(h.digest())[0] >> 4) / LD_SCALE)
        return details[i] if i < count else last

    return pick
