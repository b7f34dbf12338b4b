"""The flag and segment document model: validation, normalisation and limits.

A document is plain JSON (see ``docs/evaluation.md`` for every field).
:func:`validate_flag` and :func:`validate_segment` check one strictly and
return a normalised copy with every default filled in, so that the compiler
(``_compile``) and everything downstream can rely on the full shape.

Strict means unknown fields are errors: a typo such as ``"onn": true`` must
not silently leave a flag off.  All problems are collected, each with the
JSON path where it was found, and raised together in one ``ValidationError``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import orjson

from flagwire.core._check_rules import check_rules, check_serve
from flagwire.core._checker import Checker, is_index, kind_of, show, strings
from flagwire.core.errors import ValidationError
from flagwire.core.limits import LIMITS
from flagwire.core.operators import is_number

__all__ = ["LAUNCHDARKLY", "SEMANTICS", "semantics_of", "validate_flag", "validate_segment"]

#: The ``semantics`` of flags and segments imported from LaunchDarkly (``docs/evaluation.md``).
LAUNCHDARKLY: Final = "launchdarkly"
#: Every value ``semantics`` may take; the first is the default.
SEMANTICS: Final = ("flagwire", LAUNCHDARKLY)

_SERVER_FIELDS: Final = ("version", "created_at", "updated_at", "updated_by")
_FLAG_FIELDS: Final = frozenset(
    {
        "key",
        "name",
        "description",
        "tags",
        "on",
        "variations",
        "off_variation",
        "targets",
        "rules",
        "fallthrough",
        "prerequisites",
        "salt",
        "semantics",
        "client_side",
        *_SERVER_FIELDS,
    }
)
_SEGMENT_FIELDS: Final = frozenset(
    {
        "key",
        "name",
        "description",
        "tags",
        "included",
        "excluded",
        "rules",
        "semantics",
        "salt",
        *_SERVER_FIELDS,
    }
)
_TARGET_FIELDS: Final = frozenset({"variation", "values"})
_PREREQ_FIELDS: Final = frozenset({"key", "variation"})


def _prepare(doc: Any, what: str) -> tuple[Checker, dict[str, Any]]:
    """Check shape and size, and return a private deep copy to normalise in place."""
    if not isinstance(doc, dict):
        raise ValidationError([("", f"a {what} document must be a JSON object, got {show(doc)}")])
    try:
        raw = orjson.dumps(doc)
    except TypeError as exc:
        raise ValidationError([("", f"the {what} document is not plain JSON: {exc}")]) from None
    if len(raw) > LIMITS.max_document_bytes:
        raise ValidationError(
            [("", f"document is {len(raw)} bytes; limit {LIMITS.max_document_bytes}")]
        )
    copy: dict[str, Any] = orjson.loads(raw)
    return Checker(), copy


def semantics_of(d: dict[str, Any]) -> str:
    """The evaluation rules a validated document asked for (absent means flagwire's)."""
    value: str = d.get("semantics", SEMANTICS[0])
    return value


def _semantics(check: Checker, d: dict[str, Any]) -> bool:
    """Check ``semantics`` (kept out of the normalised copy when absent); True for LaunchDarkly."""
    if "semantics" not in d:
        return False
    if d["semantics"] not in SEMANTICS:
        check.err(
            "semantics",
            f"expected one of {', '.join(map(repr, SEMANTICS))}, got {show(d['semantics'])}",
        )
        return False
    return bool(d["semantics"] == LAUNCHDARKLY)


def _common(check: Checker, d: dict[str, Any], what: str) -> None:
    """Fields flags and segments share: key, name, description, tags, server fields."""
    check.fields(d, _FLAG_FIELDS if what == "flag" else _SEGMENT_FIELDS, "")
    if "key" not in d:
        check.err("key", "required")
    else:
        check.key(d["key"], "key")
    d.setdefault("name", d.get("key") if isinstance(d.get("key"), str) else "")
    check.text(d["name"], "name", LIMITS.max_name_length)
    d.setdefault("description", "")
    check.text(d["description"], "description", LIMITS.max_description_length)
    tags = d.setdefault("tags", [])
    if check.array(tags, "tags", LIMITS.max_tags):
        for i, tag in enumerate(tags):
            check.text(tag, f"tags[{i}]", LIMITS.max_tag_length, empty=False)
        texts = [t for t in tags if isinstance(t, str)]
        if len(set(texts)) != len(texts):
            check.err("tags", "duplicate tags")
    if "version" in d and (d["version"].__class__ is not int or d["version"] < 0):
        check.err("version", f"expected a non-negative integer, got {show(d['version'])}")
    for name in _SERVER_FIELDS[1:]:
        if name in d and not (d[name] is None or isinstance(d[name], str) or is_number(d[name])):
            check.err(name, f"expected a string or a number, got {show(d[name])}")


def validate_flag(doc: object) -> dict[str, Any]:
    """Validate a flag document and return a normalised deep copy.

    Defaults filled in: ``name`` (the key), ``description`` (""), ``tags``,
    ``targets``, ``rules``, ``prerequisites`` ([]), ``on`` (false),
    ``off_variation`` (null: an off flag serves the caller's default),
    ``salt`` (the key), clause ``negate`` (false), rollout ``bucket_by`` ("key").
    ``client_side`` (whether client-side keys may evaluate the flag through OFREP)
    is optional; absent means false.

    Raises:
        ValidationError: listing every problem as ``(json path, message)``.
    """
    check, d = _prepare(doc, "flag")
    _common(check, d, "flag")
    key = d.get("key")
    ld = _semantics(check, d)

    d.setdefault("on", False)
    if d["on"] is not True and d["on"] is not False:
        check.err("on", f"expected true or false, got {show(d['on'])}")

    count = 0
    variations = d.get("variations")
    if variations is None:
        check.err("variations", "required")
    elif check.array(variations, "variations", LIMITS.max_variations, min_len=1):
        count = len(variations)
        kinds = [kind_of(v) for v in variations]
        for i, kind in enumerate(kinds):
            if kind is None:
                check.err(
                    f"variations[{i}]",
                    f"not a boolean, string, number, object or array: {show(variations[i])}",
                )
        if kinds[0] is not None:
            for i, kind in enumerate(kinds):
                if kind is not None and kind != kinds[0]:
                    check.err(
                        f"variations[{i}]",
                        f"is a {kind} but variations[0] is a "
                        f"{kinds[0]}; all variations must be one kind",
                    )
    in_range: Callable[[Any, str], bool] = (
        (lambda v, p: check.index(v, p, count)) if count else (lambda v, p: is_index(check, v, p))
    )

    d.setdefault("off_variation", None)
    if d["off_variation"] is not None:
        in_range(d["off_variation"], "off_variation")

    targets = d.setdefault("targets", [])
    if check.array(targets, "targets", LIMITS.max_targets):
        for i, target in enumerate(targets):
            path = f"targets[{i}]"
            if not check.obj(target, path):
                continue
            check.fields(target, _TARGET_FIELDS, path)
            if "variation" not in target:
                check.err(f"{path}.variation", "required")
            else:
                in_range(target["variation"], f"{path}.variation")
            values = target.get("values")
            if values is None:
                check.err(f"{path}.values", "required")
            elif check.array(values, f"{path}.values", LIMITS.max_target_values):
                strings(check, values, f"{path}.values", "a context key (string)")

    rules = d.setdefault("rules", [])
    if check.array(rules, "rules", LIMITS.max_rules):
        check_rules(check, rules, in_range, segment=False, ld=ld)

    if "fallthrough" not in d:
        check.err("fallthrough", "required: an object with a variation or a rollout")
    else:
        check_serve(check, d["fallthrough"], "fallthrough", in_range, whole=True, ld=ld)

    prereqs = d.setdefault("prerequisites", [])
    if check.array(prereqs, "prerequisites", LIMITS.max_prerequisites):
        seen: set[str] = set()
        for i, pre in enumerate(prereqs):
            path = f"prerequisites[{i}]"
            if not check.obj(pre, path):
                continue
            check.fields(pre, _PREREQ_FIELDS, path)
            pkey = pre.get("key")
            if pkey is None:
                check.err(f"{path}.key", "required")
            elif check.key(pkey, f"{path}.key"):
                if pkey == key:
                    check.err(f"{path}.key", "a flag cannot be its own prerequisite")
                elif pkey in seen:
                    check.err(f"{path}.key", f'duplicate prerequisite "{pkey}"')
                seen.add(pkey)
            pvar = pre.get("variation")
            if pvar is None:
                check.err(f"{path}.variation", "required")
            elif pvar.__class__ is not int or pvar < 0:
                check.err(
                    f"{path}.variation",
                    f"expected a variation index of the prerequisite flag, got {show(pvar)}",
                )

    d.setdefault("salt", key if isinstance(key, str) else "")
    check.text(d["salt"], "salt", LIMITS.max_name_length, empty=False)
    # Absent means false (documents written before the field existed stay as they were).
    if "client_side" in d and d["client_side"] is not True and d["client_side"] is not False:
        check.err("client_side", f"expected true or false, got {show(d['client_side'])}")
    check.raise_if_any()
    return d


def validate_segment(doc: object) -> dict[str, Any]:
    """Validate a segment document and return a normalised deep copy.

    Defaults filled in: ``name`` (the key), ``description``, ``tags``,
    ``included``, ``excluded``, ``rules`` and clause ``negate``.

    Raises:
        ValidationError: listing every problem as ``(json path, message)``.
    """
    check, d = _prepare(doc, "segment")
    _common(check, d, "segment")
    ld = _semantics(check, d)
    if "salt" in d:
        if ld:
            check.text(d["salt"], "salt", LIMITS.max_name_length, empty=False)
        else:
            check.err("salt", 'a segment has a salt only with "semantics": "launchdarkly"')
    for name in ("included", "excluded"):
        values = d.setdefault(name, [])
        if check.array(values, name, LIMITS.max_segment_values):
            strings(check, values, name, "a context key (string)")
    rules = d.setdefault("rules", [])
    if check.array(rules, "rules", LIMITS.max_rules):
        check_rules(check, rules, lambda v, p: True, segment=True, ld=ld)
    check.raise_if_any()
    return d
