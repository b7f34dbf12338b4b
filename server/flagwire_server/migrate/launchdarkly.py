"""LaunchDarkly's flag data → flagwire documents that evaluate as they did there.

Pure: no I/O.  The input is what LaunchDarkly's server-side SDKs and the
Relay Proxy consume (``{"flags": {key: flag}, "segments": {key: segment}}``,
camelCase); the output is flagwire flags and segments with
``"semantics": "launchdarkly"`` (its bucketing, its prerequisite and segment
rules, numbers compared as doubles: ``docs/evaluation.md``), and a report
that lists, per flag and segment, everything that could not be carried over.
Nothing is dropped without a line in the report (``docs/migration.md``).

Why the rules below are exact for the contexts flagwire evaluates (single
``user`` contexts): LaunchDarkly never matches a clause, target or segment
entry of another context kind against a user, and buckets a rollout of
another kind at -1 (its first slot).  So those parts are replaced by what
they always do for a user — dropped, or a fixed variation — and reported.

Clauses (operators, attribute references, values that can never match) are
converted by ``migrate/launchdarkly_clauses.py``; flags, targets, rollouts and
segments here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flagwire.core.errors import ValidationError
from flagwire.core.limits import KEY_RE
from flagwire.core.model import LAUNCHDARKLY, validate_flag, validate_segment
from flagwire_server.migrate.launchdarkly_clauses import USER, ClauseConverter, Skip, lower

__all__ = ["Conversion", "convert"]


@dataclass
class Conversion:
    """The result of :func:`convert`.

    Attributes:
        flags: flagwire flag documents (validated), in the input's order.
        segments: flagwire segment documents (validated).
        keys: LaunchDarkly key → flagwire key, for every key that had to change.
        report: "flag KEY" / "segment KEY" → what was not carried over, or changed.
        skipped: LaunchDarkly keys of flags and segments that could not be imported at all.
    """

    flags: list[dict[str, Any]] = field(default_factory=list)
    segments: list[dict[str, Any]] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)
    report: dict[str, list[str]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def _map_keys(keys: list[str]) -> dict[str, str]:
    """LaunchDarkly keys → valid, unique flagwire keys (lowercased; clashes numbered)."""
    out: dict[str, str] = {}
    taken = {k for k in keys if isinstance(k, str) and KEY_RE.match(k)}
    for k in keys:
        if KEY_RE.match(k):
            out[k] = k
            continue
        base = re.sub(r"[^a-z0-9._-]", "-", k.lower()).lstrip("._-")[:120] or "flag"
        cand, n = base, 1
        while cand in taken:
            n += 1
            cand = f"{base}-{n}"
        taken.add(cand)
        out[k] = cand
    return out


def convert(data: Mapping[str, Any]) -> Conversion:
    """Convert LaunchDarkly flag data into flagwire documents and a report.

    Raises:
        ValueError: ``data`` is not ``{"flags": {...}, "segments": {...}}``.
    """
    if not isinstance(data, Mapping):
        raise ValueError("expected a JSON object with 'flags' and 'segments'")
    flags = data.get("flags") or {}
    segments = data.get("segments") or {}
    if not isinstance(flags, Mapping) or not isinstance(segments, Mapping):
        raise ValueError("'flags' and 'segments' must be JSON objects keyed by flag/segment key")
    out = Conversion()
    flag_keys = _map_keys([str(k) for k in flags])
    seg_keys = _map_keys([str(k) for k in segments])
    out.keys.update({k: v for k, v in {**seg_keys, **flag_keys}.items() if k != v})
    conv = _Converter(flag_keys, seg_keys)
    for ld_key, seg in segments.items():
        conv.notes = []
        name = f"segment {ld_key}"
        if isinstance(seg, Mapping) and seg.get("deleted"):
            out.report[name] = ["deleted in LaunchDarkly (a tombstone): not imported"]
            continue
        try:
            doc = validate_segment(conv.segment(str(ld_key), seg))
            out.segments.append(doc)
        except (Skip, ValidationError, TypeError, KeyError, AttributeError) as exc:
            conv.notes.append(f"not imported: {exc}")
            out.skipped.append(name)
        if seg_keys.get(str(ld_key), ld_key) != ld_key:
            conv.notes.insert(0, f"key mapped to {seg_keys[str(ld_key)]}")
        if conv.notes:
            out.report[name] = conv.notes
    for ld_key, flag in flags.items():
        conv.notes = []
        name = f"flag {ld_key}"
        if isinstance(flag, Mapping) and flag.get("deleted"):
            out.report[name] = ["deleted in LaunchDarkly (a tombstone): not imported"]
            continue
        try:
            doc = validate_flag(conv.flag(str(ld_key), flag))
            out.flags.append(doc)
        except (Skip, ValidationError, TypeError, KeyError, AttributeError) as exc:
            conv.notes.append(f"not imported: {exc}")
            out.skipped.append(name)
        if flag_keys.get(str(ld_key), ld_key) != ld_key:
            conv.notes.insert(
                0, f"key mapped to {flag_keys[str(ld_key)]} (bucketing keeps {ld_key})"
            )
        if conv.notes:
            out.report[name] = conv.notes
    return out


class _Converter(ClauseConverter):
    """Converts one document at a time, collecting its report lines in ``notes``."""

    def __init__(self, flag_keys: dict[str, str], seg_keys: dict[str, str]) -> None:
        super().__init__(seg_keys)
        self.flag_keys = flag_keys

    # --- flags --------------------------------------------------------------------------

    def flag(self, ld_key: str, f: Mapping[str, Any]) -> dict[str, Any]:
        variations = f.get("variations") or []
        if not variations:
            raise Skip("the flag has no variations")
        doc: dict[str, Any] = {
            "key": self.flag_keys[ld_key],
            "name": ld_key,
            "description": f"Imported from LaunchDarkly flag {ld_key!r}.",
            "semantics": LAUNCHDARKLY,
            "on": bool(f.get("on")),
            "variations": list(variations),
            "off_variation": f.get("offVariation"),
            # LaunchDarkly hashes "flagKey.salt.value": the original key, capitals and all.
            "salt": f"{ld_key}.{f.get('salt') or ''}",
            "targets": self.targets(f),
            "prerequisites": [],
        }
        for p in f.get("prerequisites") or []:
            pkey = p.get("key")
            if pkey == ld_key:
                raise Skip("the flag is its own prerequisite (LaunchDarkly: always an error)")
            doc["prerequisites"].append(
                {"key": self.flag_keys.get(pkey, lower(pkey)), "variation": p.get("variation")}
            )
        rules: list[dict[str, Any]] = []
        ids: set[str] = set()
        for i, r in enumerate(f.get("rules") or []):
            try:
                rule = self.flag_rule(r)
            except Skip as why:
                self.notes.append(f"rules[{i}] (id {r.get('id')!r}) dropped: {why}")
                continue
            rid = r.get("id")
            if isinstance(rid, str) and rid and rid not in ids and len(rid) <= 256:
                rule["id"] = rid
                ids.add(rid)
            rules.append(rule)
        doc["rules"] = rules
        try:
            doc["fallthrough"] = self.serve(f.get("fallthrough") or {})
        except Skip as why:
            raise Skip(f"fallthrough: {why}") from None
        if f.get("trackEvents") or f.get("trackEventsFallthrough"):
            self.notes.append("event tracking settings not imported (flagwire has no experiments)")
        available = f.get("clientSideAvailability")
        if (isinstance(available, Mapping) and available.get("usingEnvironmentId")) or (
            f.get("clientSide") is True
        ):
            # LaunchDarkly's client-side SDKs may read it: flagwire's client-side keys (OFREP).
            doc["client_side"] = True
        return doc

    def targets(self, f: Mapping[str, Any]) -> list[dict[str, Any]]:
        """User targets in the order LaunchDarkly checks them (``contextTargets`` lead when set)."""
        user = [t for t in f.get("targets") or [] if isinstance(t, Mapping)]
        ordered = f.get("contextTargets") or []
        if not ordered:
            return [
                {"variation": t.get("variation"), "values": list(t.get("values") or [])}
                for t in user
            ]
        out = []
        for t in ordered:
            kind = t.get("contextKind") or USER
            if kind != USER:
                self.notes.append(
                    f"targets of context kind {kind!r} ({len(t.get('values') or [])} keys) "
                    "not imported: they never match a user"
                )
                continue
            for ut in user:  # LaunchDarkly looks only at the first user target of that variation
                if ut.get("variation") == t.get("variation"):
                    out.append(
                        {"variation": ut["variation"], "values": list(ut.get("values") or [])}
                    )
                    break
        return out

    def flag_rule(self, r: Mapping[str, Any]) -> dict[str, Any]:
        rule: dict[str, Any] = {"clauses": self.clauses(r.get("clauses") or [], segment=False)}
        rule.update(self.serve(r))
        return rule

    def serve(self, vr: Mapping[str, Any]) -> dict[str, Any]:
        if vr.get("variation") is not None:
            return {"variation": vr["variation"]}
        roll = vr.get("rollout")
        if not isinstance(roll, Mapping) or not roll.get("variations"):
            raise Skip("neither a variation nor a rollout with variations (LaunchDarkly: an error)")
        slots = [
            {"variation": s.get("variation"), "weight": s.get("weight")} for s in roll["variations"]
        ]
        kind = roll.get("contextKind") or USER
        if kind != USER:
            # LaunchDarkly buckets a context without that kind at -1: always the first slot.
            self.notes.append(
                f"a rollout by context kind {kind!r} always serves its first slot to a user: "
                "imported as that variation"
            )
            return {"variation": slots[0]["variation"]}
        out: dict[str, Any] = {"variations": slots, "bucket_by": "key"}
        if roll.get("kind") == "experiment":
            self.notes.append("an experiment imported as a plain rollout by key (no tracking)")
        elif roll.get("bucketBy"):
            out["bucket_by"] = self.attribute(roll["bucketBy"], roll.get("contextKind"))
        if roll.get("seed") is not None:
            out["seed"] = roll["seed"]
        total = sum(s["weight"] for s in slots if isinstance(s["weight"], int))
        if total != 100_000:
            self.notes.append(
                f"a rollout's weights sum to {total}, not 100000: as in LaunchDarkly, "
                "the last slot serves the rest"
            )
        return {"rollout": out}

    # --- segments -----------------------------------------------------------------------

    def segment(self, ld_key: str, s: Mapping[str, Any]) -> dict[str, Any]:
        included = [k for k in s.get("included") or [] if isinstance(k, str)]
        excluded = [k for k in s.get("excluded") or [] if isinstance(k, str)]
        for name, into in (("includedContexts", included), ("excludedContexts", excluded)):
            for t in s.get(name) or []:
                kind = t.get("contextKind") or USER
                if kind == USER:
                    into.extend(v for v in t.get("values") or [] if isinstance(v, str))
                else:
                    self.notes.append(f"{name} of context kind {kind!r} not imported: never a user")
        doc: dict[str, Any] = {
            "key": self.seg_keys[ld_key],
            "name": ld_key,
            "description": f"Imported from LaunchDarkly segment {ld_key!r}.",
            "semantics": LAUNCHDARKLY,
            "salt": f"{ld_key}.{s.get('salt') or ''}",
            "included": included,
            "excluded": excluded,
        }
        if s.get("unbounded"):
            doc["included"], doc["excluded"] = [], []
            self.notes.append(
                "a big segment: its members live in LaunchDarkly's big segment store, not in "
                "this data; imported with its rules only"
            )
        both = set(included) & set(excluded)
        if both:
            self.notes.append(
                f"{len(both)} key(s) both included and excluded: included (LaunchDarkly's rule)"
            )
        rules = []
        for i, r in enumerate(s.get("rules") or []):
            try:
                rule: dict[str, Any] = {
                    "clauses": self.clauses(r.get("clauses") or [], segment=True)
                }
            except Skip as why:
                self.notes.append(f"rules[{i}] dropped: {why}")
                continue
            if r.get("weight") is not None:
                kind = r.get("rolloutContextKind") or USER
                if kind == USER:
                    rule["weight"] = r["weight"]
                    if r.get("bucketBy"):
                        rule["bucket_by"] = self.attribute(
                            r["bucketBy"], r.get("rolloutContextKind")
                        )
            rules.append(rule)
        doc["rules"] = rules
        return doc
