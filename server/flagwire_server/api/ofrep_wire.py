"""OFREP's wire shapes, built from flagwire's evaluation results (no I/O).

Why apart from the handlers: what an OFREP answer looks like (reasons, variants,
error codes, metadata, the bulk ETag) is a pure function of a snapshot, a
context and the caller's visibility, and is tested without a server.

Specification: the OpenFeature Remote Evaluation Protocol, ``service/openapi.yaml``
(``info.version`` 0.1.0) of github.com/open-feature/protocol, and its proposed
ADR-0008 (Server-Sent Events for bulk evaluation changes); see ``docs/ofrep.md``.

Mapping of flagwire's reasons to OpenFeature's:

=====================  ==========================================================
flagwire               OFREP ``reason``
=====================  ==========================================================
OFF                    ``DISABLED``
TARGET_MATCH           ``TARGETING_MATCH``
RULE_MATCH             ``TARGETING_MATCH``, or ``SPLIT`` when the rule is a rollout
FALLTHROUGH            ``STATIC`` (no targets, rules or prerequisites), ``SPLIT``
                       (a rollout), else ``DEFAULT``
PREREQUISITE_FAILED    ``DEFAULT`` (``metadata.prerequisiteKey`` names it)
ERROR                  an evaluation failure: ``FLAG_NOT_FOUND``, ``PARSE_ERROR``
                       (malformed flag), ``INVALID_CONTEXT``, ``GENERAL``
=====================  ==========================================================

The variant is the index of the variation served, as a string (``"0"``,
``"1"``...): flagwire's variations are values without names.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Final

import orjson

from flagwire.core.evaluation import EvaluationDetail, Snapshot

__all__ = [
    "ERROR_STATUS",
    "BulkCache",
    "bulk_body",
    "etag_matches",
    "etag_of",
    "flagwire_context",
    "is_visible",
    "ofrep_result",
]

#: HTTP status of a single-flag evaluation failure, by OFREP error code.
ERROR_STATUS: Final = {
    "FLAG_NOT_FOUND": 404,
    "PARSE_ERROR": 400,
    "TARGETING_KEY_MISSING": 400,
    "INVALID_CONTEXT": 400,
    "GENERAL": 400,
}
_ERROR_CODES: Final = {
    "FLAG_NOT_FOUND": "FLAG_NOT_FOUND",
    "MALFORMED_FLAG": "PARSE_ERROR",
    "INVALID_CONTEXT": "INVALID_CONTEXT",
    "WRONG_TYPE": "GENERAL",
    "PREREQUISITE_CYCLE": "GENERAL",
    "CLIENT_NOT_READY": "GENERAL",
}
_ERROR_DETAILS: Final = {
    "FLAG_NOT_FOUND": "no flag with this key is visible to this key",
    "PARSE_ERROR": "the flag's document is invalid; it serves no value until it is fixed",
    "INVALID_CONTEXT": "the context cannot be evaluated",
    "GENERAL": "the flag could not be evaluated",
}


def is_visible(doc: Mapping[str, Any], client_side: bool) -> bool:
    """Whether a caller may evaluate a flag: server keys see all, client-side keys opted-in ones."""
    return not client_side or doc.get("client_side") is True


def flagwire_context(context: Mapping[str, Any]) -> dict[str, Any]:
    """An OFREP context as flagwire evaluates it: ``targetingKey`` becomes ``key``.

    A ``key`` the caller sent wins, so contexts written for flagwire work as they are.
    """
    out = dict(context)
    target = out.pop("targetingKey", None)
    if "key" not in out and target is not None:
        out["key"] = target
    return out


def _serves_rollout(serve: Any) -> bool:
    return isinstance(serve, dict) and serve.get("rollout") is not None


def _reason(detail: EvaluationDetail, doc: Mapping[str, Any]) -> str:
    reason = str(detail.reason)
    if reason == "OFF":
        return "DISABLED"
    if reason == "TARGET_MATCH":
        return "TARGETING_MATCH"
    if reason == "RULE_MATCH":
        rules = doc.get("rules") or []
        index = detail.rule_index
        rule = rules[index] if isinstance(index, int) and 0 <= index < len(rules) else None
        return "SPLIT" if _serves_rollout(rule) else "TARGETING_MATCH"
    if reason == "FALLTHROUGH":
        if _serves_rollout(doc.get("fallthrough")):
            return "SPLIT"
        if doc.get("targets") or doc.get("rules") or doc.get("prerequisites"):
            return "DEFAULT"
        return "STATIC"
    if reason == "PREREQUISITE_FAILED":
        return "DEFAULT"
    return "UNKNOWN"


def ofrep_result(
    key: str, detail: EvaluationDetail, doc: Mapping[str, Any] | None
) -> dict[str, Any]:
    """One flag's OFREP answer: ``evaluationSuccess`` or ``evaluationFailure``/``flagNotFound``."""
    if doc is None:
        return _failure(key, "FLAG_NOT_FOUND")
    if str(detail.reason) == "ERROR":
        return _failure(key, _ERROR_CODES.get(str(detail.error_kind), "GENERAL"))
    metadata: dict[str, Any] = {}
    if isinstance(doc.get("version"), int):
        metadata["flagVersion"] = doc["version"]
    if detail.rule_id:
        metadata["ruleId"] = detail.rule_id
    if detail.prerequisite_key:
        metadata["prerequisiteKey"] = detail.prerequisite_key
    out: dict[str, Any] = {
        "key": key,
        "reason": _reason(detail, doc),
        "variant": "default" if detail.variation_index is None else str(detail.variation_index),
        "metadata": metadata,
    }
    if detail.value is not None:
        out["value"] = detail.value
    return out


def _failure(key: str, code: str) -> dict[str, Any]:
    return {"key": key, "errorCode": code, "errorDetails": _ERROR_DETAILS[code]}


def bulk_body(
    snap: Snapshot,
    context: Mapping[str, Any],
    *,
    client_side: bool,
    event_streams: list[dict[str, Any]] | None = None,
) -> tuple[bytes, str]:
    """The bulk evaluation response of every flag the caller may see, and its ETag.

    The ETag covers what the context gets (each visible flag's value, variant,
    reason or error), not the metadata: an edit that changes nothing for this
    context, or a change to a flag it cannot see, answers ``If-None-Match`` with 304.
    """
    flags = []
    tags = []
    docs = snap.flags
    for key in sorted(docs):
        doc = docs[key]
        if not is_visible(doc, client_side):
            continue
        result, tag = _answer(key, snap.evaluate(key, context, None), doc)
        flags.append(result)
        tags.append(tag)
    body: dict[str, Any] = {"flags": flags}
    if event_streams:
        # Not in the tag: its URL names the version, and a 304 keeps the client's copy.
        body["eventStreams"] = event_streams
    return orjson.dumps(body), etag_of(b"".join(tags))


#: Answers built for the evaluator's shared details.  The evaluator builds one detail
#: per outcome of a compiled flag and returns that same object to every evaluation,
#: so a flag's OFREP answer (and the bytes its ETag covers) is built once per outcome,
#: not once per request: that halved the cost of a bulk evaluation of 50 flags.
#: Bounded like ``functools.lru_cache`` (emptied when full); a changed flag is
#: recompiled into new details, so a stale entry is never returned.
_MEMO_MAX: Final = 20_000
_memo: dict[int, tuple[EvaluationDetail, Mapping[str, Any], dict[str, Any], bytes]] = {}


def _answer(
    key: str, detail: EvaluationDetail, doc: Mapping[str, Any]
) -> tuple[dict[str, Any], bytes]:
    """``ofrep_result`` and the bytes of it that the bulk ETag covers (not the metadata)."""
    hit = _memo.get(id(detail))
    if hit is not None and hit[0] is detail and hit[1] is doc:
        return hit[2], hit[3]
    result = ofrep_result(key, detail, doc)
    tag = orjson.dumps(
        [
            key,
            result.get("value"),
            result.get("variant"),
            result.get("reason"),
            result.get("errorCode"),
        ]
    )
    # Errors and served defaults are built per evaluation: not shared, not kept.
    if detail.variation_index is not None and detail.error_kind is None:
        if len(_memo) >= _MEMO_MAX:
            _memo.clear()
        _memo[id(detail)] = (detail, doc, result, tag)
    return result, tag


class BulkCache:
    """Recent bulk answers by (environment epoch and version, visibility, context).

    Why: a polling provider asks again and again with the same context, and
    nothing changed most of the time; the answer is a pure function of the
    snapshot's version and the context, so it is kept and its 304 costs no
    evaluation.  Bounded: least recently used entries go first.
    """

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._entries: OrderedDict[bytes, tuple[bytes, str]] = OrderedDict()

    def answer(
        self,
        snap: Snapshot,
        context: Mapping[str, Any],
        *,
        client_side: bool,
        event_streams: list[dict[str, Any]] | None = None,
    ) -> tuple[bytes, str]:
        """What :func:`bulk_body` answers, from the cache when it can."""
        key = orjson.dumps(
            [snap.epoch, snap.version, client_side, event_streams, context],
            option=orjson.OPT_SORT_KEYS,
        )
        hit = self._entries.get(key)
        if hit is not None:
            self._entries.move_to_end(key)
            return hit
        made = bulk_body(snap, context, client_side=client_side, event_streams=event_streams)
        self._entries[key] = made
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return made


def etag_of(data: bytes) -> str:
    """A strong entity tag of ``data``: equal data, equal tags."""
    return '"' + hashlib.blake2b(data, digest_size=12).hexdigest() + '"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` header names ``etag`` (weak comparison, ``*`` matches)."""
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        tag = candidate.strip()
        if tag == "*":
            return True
        if tag.startswith("W/"):
            tag = tag[2:]
        if tag == etag:
            return True
    return False
