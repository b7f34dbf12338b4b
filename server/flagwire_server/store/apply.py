"""Many flag and segment writes as one atomic operation: the store side of ``flagwire apply``.

Why not a loop of single writes: flags as code promises that a folder is
applied whole or not at all.  A loop that fails on its seventh document leaves
six written and the environment matching neither the folder nor what it was.
So every document is validated here, every version the caller read is checked
again inside one Lua script (``scripts/apply.lua``), and only then is anything
written: each changed document gets an environment version and a change-log
entry of its own (clients apply them exactly like single writes), and the
audit log gets one entry naming the apply.

A document equal to the stored one (apart from the server's bookkeeping) is
left alone, so applying the same folder twice changes nothing the second time.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson
import redis.asyncio as aioredis

from flagwire.core.errors import ValidationError
from flagwire.core.limits import KEY_RE
from flagwire.core.protocol import patch_template
from flagwire_server.store.keyspace import Keyspace
from flagwire_server.store.types import (
    Conflict,
    Kind,
    NotFound,
    SnapshotTooLarge,
    StoreCorrupt,
    _body,
    _loads,
    _now,
    _script,
    _translated,
    _version_of,
    as_str,
    validate_doc,
)

__all__ = ["MAX_APPLY_DOCUMENTS", "Applied", "Applier", "ApplyItem", "ApplyResult"]

#: Most documents one apply may change (each is an environment version and a change-log entry).
MAX_APPLY_DOCUMENTS: Final = 2000
_RETRIES: Final = 8
#: The order changes are written, so that a client applying them one by one never sees a
#: flag before the segment it uses, nor a segment deleted before the flags that used it.
_ORDER: Final = {("segment", "put"): 0, ("flag", "put"): 1, ("flag", "delete"): 2}


@dataclass(frozen=True, slots=True)
class ApplyItem:
    """One document of an apply: ``doc`` None deletes it; ``expected`` is the version read."""

    kind: Kind
    key: str
    doc: dict[str, Any] | None
    expected: int | None = None


@dataclass(frozen=True, slots=True)
class Applied:
    """One document the apply changed."""

    kind: Kind
    key: str
    action: Literal["create", "update", "delete"]
    version: int  # the document's new version (its last one for a delete)
    env_version: int


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What an apply did; ``env_version`` is the environment's version after it."""

    env_version: int
    committed_ms: int
    changes: list[Applied] = field(default_factory=list)
    unchanged: list[tuple[Kind, str]] = field(default_factory=list)


@dataclass(slots=True)
class _Write:
    item: ApplyItem
    mode: Literal["put", "delete"]
    current: int
    new: dict[str, Any] | None
    version: int
    action: Literal["create", "update", "delete"]


class Applier:
    """The atomic apply over one Redis client (``Store.apply`` delegates here).

    Args:
        redis: the store's asyncio Redis client.
        keyspace: where the keys are.
        changes_maxlen, history_cap, audit_maxlen, max_snapshot: the store's bounds.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        keyspace: Keyspace,
        *,
        changes_maxlen: int,
        history_cap: int,
        audit_maxlen: int,
        max_snapshot: int,
    ) -> None:
        self.redis = redis
        self.ks = keyspace
        self._script = redis.register_script(_script("apply"))
        self._bounds = (changes_maxlen, history_cap, audit_maxlen, max_snapshot)

    @_translated
    async def apply(
        self, env: str, items: list[ApplyItem], *, actor: str, name: str
    ) -> ApplyResult:
        """Write every item or none.

        Raises:
            ValidationError: an invalid document (every problem, paths prefixed
                ``flag:<key>`` / ``segment:<key>``), a duplicate, too many documents.
            Conflict: a document is not at the version the caller read.
            NotFound: the environment does not exist.
            SnapshotTooLarge: the environment would be too big for clients.
        """
        bodies = _checked(items)
        for attempt in range(_RETRIES):
            if attempt:
                await asyncio.sleep(random.uniform(0, 0.005 * attempt))
            writes, unchanged, version = await self._prepare(env, items, bodies, actor)
            if not writes:
                return ApplyResult(version, 0, [], unchanged)
            res = await self._run(env, writes, actor=actor, name=name)
            status = as_str(res[0])
            if status == "ok":
                first, ms = int(as_str(res[1])), int(as_str(res[3]))
                changes = [
                    Applied(w.item.kind, w.item.key, w.action, w.version, first + i)
                    for i, w in enumerate(writes)
                ]
                return ApplyResult(first + len(writes) - 1, ms, changes, unchanged)
            if status == "noenv":
                raise NotFound(f"environment {env!r} does not exist")
            if status == "toolarge":
                raise SnapshotTooLarge(int(as_str(res[1])), self._bounds[3])
            if status == "corrupt":
                raise StoreCorrupt(
                    f"key {as_str(res[1])} has an unexpected type; nothing was written"
                )
            w = writes[int(as_str(res[1])) - 1]
            now = int(as_str(res[2])) if status == "conflict" else 0
            if w.item.expected is not None or attempt == _RETRIES - 1:
                raise Conflict(
                    f"{w.item.kind} {w.item.key!r} changed concurrently (now version {now}); "
                    "nothing was applied",
                    now,
                )
        raise AssertionError("unreachable")  # pragma: no cover

    async def _prepare(
        self, env: str, items: list[ApplyItem], bodies: list[dict[str, Any] | None], actor: str
    ) -> tuple[list[_Write], list[tuple[Kind, str]], int]:
        """Read what is stored, check the versions read, and build the new documents."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(self.ks.meta(env), "version")
        for item in items:
            pipe.hget(self.ks.docs(env, item.kind), item.key)
            pipe.lindex(self.ks.history(env, item.kind, item.key), 0)
        raw = await pipe.execute()
        if raw[0] is None:
            raise NotFound(f"environment {env!r} does not exist")
        writes: list[_Write] = []
        unchanged: list[tuple[Kind, str]] = []
        now = _now()
        for i, (item, body) in enumerate(zip(items, bodies, strict=True)):
            cur, last = _loads(raw[1 + 2 * i]), _loads(raw[2 + 2 * i])
            current = _version_of(cur)
            if item.expected is not None and item.expected != current:
                raise Conflict(
                    f"{item.kind} {item.key!r} is at version {current}, not {item.expected}; "
                    "nothing was applied",
                    current,
                )
            if body is None:
                if cur is None:
                    unchanged.append((item.kind, item.key))
                else:
                    writes.append(_Write(item, "delete", current, None, current, "delete"))
                continue
            new = validate_doc(item.kind, body)
            if cur is not None and _same(item.kind, item.key, cur, new):
                unchanged.append((item.kind, item.key))
                continue
            # A deleted document's versions continue from its history (as in a single write).
            base = current if cur is not None else _version_of(last)
            new["version"] = base + 1
            new["created_at"] = cur.get("created_at", now) if cur else now
            new["updated_at"] = now
            new["updated_by"] = actor
            action: Literal["create", "update"] = "update" if cur is not None else "create"
            writes.append(_Write(item, "put", current, new, base + 1, action))
        writes.sort(key=lambda w: _ORDER.get((w.item.kind, w.mode), 3))
        return writes, unchanged, int(as_str(raw[0]))

    async def _run(self, env: str, writes: list[_Write], *, actor: str, name: str) -> Any:
        changes_maxlen, history_cap, audit_maxlen, max_snapshot = self._bounds
        summary = {
            "apply": name,
            "documents": [
                {"kind": w.item.kind, "key": w.item.key, "action": w.action, "version": w.version}
                for w in writes
            ],
        }
        keys = [
            self.ks.meta(env),
            self.ks.docs(env, "flag"),
            self.ks.docs(env, "segment"),
            self.ks.changes(env),
            self.ks.audit(env),
        ]
        args: list[Any] = [
            len(writes),
            actor,
            name,
            changes_maxlen,
            history_cap,
            audit_maxlen,
            max_snapshot,
            orjson.dumps(summary),
        ]
        for w in writes:
            keys.append(self.ks.history(env, w.item.kind, w.item.key))
            prefix, suffix = patch_template(w.item.kind, w.item.key, w.new)
            args += [
                w.item.kind,
                w.item.key,
                w.mode,
                w.current,
                orjson.dumps(w.new) if w.new is not None else b"",
                prefix,
                suffix,
            ]
        return await self._script(keys=keys, args=args)


def _same(kind: Kind, key: str, cur: dict[str, Any], new: dict[str, Any]) -> bool:
    """True when ``new`` is the stored ``cur`` apart from the server's bookkeeping."""
    try:
        return validate_doc(kind, _body(cur, key)) == new
    except ValidationError:  # a stored document that no longer validates: not the same
        return False


def _checked(items: list[ApplyItem]) -> list[dict[str, Any] | None]:
    """The items' bodies, every problem of every document collected into one error."""
    if len(items) > MAX_APPLY_DOCUMENTS:
        raise ValidationError(
            [("documents", f"too many documents: {len(items)} > limit {MAX_APPLY_DOCUMENTS}")]
        )
    errors: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    bodies: list[dict[str, Any] | None] = []
    for item in items:
        where = f"{item.kind}:{item.key}"
        bodies.append(None)
        if item.kind not in ("flag", "segment"):
            errors.append((where, "kind must be flag or segment"))
            continue
        if not isinstance(item.key, str) or not KEY_RE.match(item.key):
            errors.append((where, f"{str(item.key)[:140]!r} is not a valid key"))
            continue
        if (item.kind, item.key) in seen:
            errors.append((where, "listed twice in one apply"))
            continue
        seen.add((item.kind, item.key))
        if item.doc is None:
            continue
        try:
            body = _body(item.doc, item.key)
            validate_doc(item.kind, body)
        except ValidationError as exc:
            errors += [(f"{where}.{path}" if path else where, msg) for path, msg in exc.errors]
            continue
        bodies[-1] = body
    if errors:
        raise ValidationError(errors)
    return bodies
