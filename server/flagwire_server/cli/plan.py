"""What ``flagwire apply`` would change: a folder compared with an environment (pure, no I/O).

Why compare normalised documents: the server stores every document as the
model normalised it (defaults filled in), so a folder file that leaves out
``tags: []`` is the same flag as the stored one.  Both sides go through the
same ``validate_flag``/``validate_segment`` and the server's own fields are
dropped, so a plan shows only real differences, field by field, and an apply
of an unchanged folder changes nothing.

The plan keeps the version of every stored document it compared; ``apply``
sends them, and the store refuses the whole apply if any moved since.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from flagwire.core.errors import ValidationError
from flagwire_server.cli.folder import SERVER_FIELDS, Document, Folder, Kind, validate_doc

__all__ = ["Change", "FieldDiff", "Plan", "diff_fields", "make_plan", "render"]


@dataclass(frozen=True, slots=True)
class FieldDiff:
    """One field that differs: ``before`` or ``after`` is ``...`` where it is absent."""

    path: str
    before: Any
    after: Any


@dataclass(frozen=True, slots=True)
class Change:
    """One document the apply would write."""

    kind: Kind
    key: str
    action: Literal["create", "update", "delete"]
    version: int  # the stored version compared (0: absent), sent as the expected one
    document: dict[str, Any] | None  # the folder's body; None for a delete
    fields: tuple[FieldDiff, ...] = ()
    file: str = ""


@dataclass(slots=True)
class Plan:
    """Every change, and the stored documents the folder does not have."""

    env: str
    env_version: int
    prune: bool
    changes: list[Change] = field(default_factory=list)
    server_only: list[tuple[Kind, str]] = field(default_factory=list)

    @property
    def drift(self) -> bool:
        """True when applying would change the environment."""
        return bool(self.changes)

    def counts(self) -> dict[str, int]:
        return {a: sum(c.action == a for c in self.changes) for a in ("create", "update", "delete")}

    def to_json(self) -> dict[str, Any]:
        return {
            "env": self.env,
            "env_version": self.env_version,
            "drift": self.drift,
            "prune": self.prune,
            **self.counts(),
            "changes": [
                {
                    "kind": c.kind,
                    "key": c.key,
                    "action": c.action,
                    "version": c.version,
                    "file": c.file or None,
                    "fields": [{"path": f.path, **_sides(f)} for f in c.fields],
                }
                for c in self.changes
            ],
            "server_only": [{"kind": k, "key": key} for k, key in self.server_only],
        }


def _sides(f: FieldDiff) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if f.before is not ...:
        out["before"] = f.before
    if f.after is not ...:
        out["after"] = f.after
    return out


def _stored(kind: Kind, doc: dict[str, Any]) -> dict[str, Any]:
    """A stored document as the folder would state it: normalised, no server fields."""
    body = {k: v for k, v in doc.items() if k not in SERVER_FIELDS}
    try:
        return validate_doc(kind, body)
    except ValidationError:  # stored before a rule tightened: compare it as it is
        return body


def make_plan(
    env: str,
    env_version: int,
    folder: Folder,
    stored: dict[Kind, list[dict[str, Any]]],
    *,
    prune: bool,
) -> Plan:
    """Compare a valid folder with the stored flags and segments of ``env``."""
    plan = Plan(env, env_version, prune)
    kinds: tuple[Kind, Kind] = ("segment", "flag")
    for kind in kinds:
        by_key = {str(d["key"]): d for d in stored.get(kind, [])}
        mine: list[Document] = folder.of(kind)
        for doc in mine:
            cur = by_key.get(doc.key)
            if cur is None:
                fields = tuple(diff_fields({}, doc.body))
                plan.changes.append(Change(kind, doc.key, "create", 0, doc.body, fields, doc.file))
                continue
            fields = tuple(diff_fields(_stored(kind, cur), doc.normal))
            if fields:
                version = cur.get("version")
                plan.changes.append(
                    Change(
                        kind,
                        doc.key,
                        "update",
                        version if type(version) is int else 0,
                        doc.body,
                        fields,
                        doc.file,
                    )
                )
        keys = {d.key for d in mine}
        for key in sorted(set(by_key) - keys):
            plan.server_only.append((kind, key))
    if prune:
        # Flags go before segments so no flag is left pointing at a deleted segment.
        for kind in kinds[::-1]:
            by_key = {str(d["key"]): d for d in stored.get(kind, [])}
            for k, key in plan.server_only:
                if k == kind:
                    version = by_key[key].get("version")
                    plan.changes.append(
                        Change(kind, key, "delete", version if type(version) is int else 0, None)
                    )
    return plan


def diff_fields(before: Any, after: Any, path: str = "") -> Iterator[FieldDiff]:
    """The differing leaves of two JSON values, with their paths (``rules[0].variation``).

    Objects are compared field by field; arrays of the same length item by
    item; anything else (including arrays of different lengths) as a whole.
    """
    if isinstance(before, dict) and isinstance(after, dict):
        for name in [*before, *(k for k in after if k not in before)]:
            sub = f"{path}.{name}" if path else str(name)
            if name not in after:
                yield FieldDiff(sub, before[name], ...)
            elif name not in before:
                yield FieldDiff(sub, ..., after[name])
            else:
                yield from diff_fields(before[name], after[name], sub)
        return
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        for i, (b, a) in enumerate(zip(before, after, strict=True)):
            yield from diff_fields(b, a, f"{path}[{i}]")
        return
    if before != after or type(before) is not type(after):
        yield FieldDiff(path, before, after)


def _show(value: Any) -> str:
    if value is ...:
        return "(absent)"
    text = orjson.dumps(value).decode()
    return text if len(text) <= 120 else text[:117] + "..."


_MARK = {"create": "+", "update": "~", "delete": "-"}


def render(plan: Plan) -> list[str]:
    """The plan for people: one block per document, one line per field."""
    lines: list[str] = []
    for c in plan.changes:
        where = f"  ({c.file})" if c.file else ""
        at = f" at version {c.version}" if c.version else ""
        lines.append(f"{_MARK[c.action]} {c.kind} {c.key}: {c.action}{at}{where}")
        for f in c.fields:
            if c.action == "create":
                lines.append(f"    {f.path}: {_show(f.after)}")
            else:
                lines.append(f"    {f.path}: {_show(f.before)} -> {_show(f.after)}")
    if not plan.prune:
        for kind, key in plan.server_only:
            lines.append(f"  {kind} {key}: on the server only (kept; --prune deletes it)")
    n = plan.counts()
    if plan.changes:
        lines.append(
            f"Plan for {plan.env} (version {plan.env_version}): {n['create']} to create, "
            f"{n['update']} to update, {n['delete']} to delete."
        )
    else:
        lines.append(f"No changes: {plan.env} (version {plan.env_version}) matches the folder.")
    return lines
