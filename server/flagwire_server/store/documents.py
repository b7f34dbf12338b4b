"""The Redis flag store: every change is one atomic Lua script.

Why this shape: a client that sees environment version ``n`` must be able to
trust that the flags it holds are exactly Redis's flags at ``n`` and that the
change log holds an entry for every version.  So a write bumps the version,
stores the document, appends the encoded change message (``<version>-0`` in
``P:{env}:changes``), records the previous document in the history list and
adds an audit entry in one script — all of it or none of it.

The new document carries its own flag ``version`` and the change message
carries the new environment version, so the document is built in Python from
the stored one (as this process last read or wrote it), and the script
re-checks that it is still what is stored (optimistic concurrency, see
``write.py``).  When the caller gave no expected version a lost race is built
again on what is stored; when they did, it is a :class:`Conflict`.
Validation runs before the script, so nothing is written for an invalid
document.

Key layout: see ``docs/design.md`` (Storage).  Segment history lives in
``P:{env}:seghistory:<key>``.

Errors, results and the pure helpers live in ``types.py`` (re-exported here);
the one write path (a per-document lock, the cache of stored documents that
spares a read per write, the script call) lives in ``write.py``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import redis.asyncio as aioredis

from flagwire.core.errors import ValidationError
from flagwire.core.limits import ENV_RE
from flagwire_server.store.apply import Applier, ApplyItem, ApplyResult
from flagwire_server.store.environments import Environments
from flagwire_server.store.keyspace import Keyspace
from flagwire_server.store.types import (
    SERVER_FIELDS,
    AlreadyExists,
    AuditEntry,
    Conflict,
    EnvState,
    Kind,
    NotFound,
    SnapshotTooLarge,
    StoreCorrupt,
    StoreError,
    StoreUnavailable,
    WriteResult,
    _audit_entry,
    _body,
    _loads,
    _translated,
    as_str,
    merge_patch,
    stream_before,
)
from flagwire_server.store.write import (
    AUDIT_MAXLEN,
    CHANGES_MAXLEN,
    HISTORY_CAP,
    MAX_SNAPSHOT_DOCS,
    Archive,
    Compute,
    Mode,
    Writer,
)

__all__ = [
    "ENV_RE",
    "SERVER_FIELDS",
    "AlreadyExists",
    "ApplyItem",
    "ApplyResult",
    "AuditEntry",
    "Conflict",
    "EnvState",
    "Kind",
    "NotFound",
    "SnapshotTooLarge",
    "Store",
    "StoreCorrupt",
    "StoreError",
    "StoreUnavailable",
    "WriteResult",
    "merge_patch",
]


class Store(Environments):
    """Flags, segments, environments, history and audit in one Redis.

    The environments' own operations (create, list, delete, load) are inherited
    from :class:`~flagwire_server.store.environments.Environments`.

    Args:
        redis: an asyncio Redis client (``decode_responses`` either way).
        prefix: the key prefix ``P`` (``FLAGWIRE_REDIS_PREFIX``).
    """

    def __init__(self, redis: aioredis.Redis, prefix: str = "fw") -> None:
        super().__init__(redis, Keyspace(prefix))
        self._prefix = prefix
        self._writer = Writer(redis, self.keyspace)
        self._applier = Applier(
            redis,
            self.keyspace,
            changes_maxlen=CHANGES_MAXLEN,
            history_cap=HISTORY_CAP,
            audit_maxlen=AUDIT_MAXLEN,
            max_snapshot=MAX_SNAPSHOT_DOCS,
        )

    @property
    def prefix(self) -> str:
        return self._prefix

    def key(self, env: str, suffix: str) -> str:
        """The Redis key ``P:{env}:suffix`` (hash-tagged so an env stays in one slot)."""
        return self.keyspace.env(env, suffix)

    def _docs_key(self, env: str, kind: Kind) -> str:
        return self.keyspace.docs(env, kind)

    def _history_key(self, env: str, kind: Kind, key: str) -> str:
        return self.keyspace.history(env, kind, key)

    # --- documents ----------------------------------------------------------

    @_translated
    async def list_docs(self, env: str, kind: Kind) -> list[dict[str, Any]]:
        """Every flag (or segment) of ``env`` sorted by key; raises :class:`NotFound`."""
        await self._require_env(env)
        raw = await self.redis.hgetall(self._docs_key(env, kind))
        docs = [d for d in (_loads(v) for v in raw.values()) if d is not None]
        return sorted(docs, key=lambda d: str(d.get("key", "")))

    @_translated
    async def get_doc(self, env: str, kind: Kind, key: str) -> dict[str, Any]:
        raw = await self.redis.hget(self._docs_key(env, kind), key)
        doc = _loads(raw)
        if doc is None:
            await self._require_env(env)
            raise NotFound(f"{kind} {key!r} does not exist in {env!r}")
        return doc

    async def put(
        self,
        env: str,
        kind: Kind,
        doc: object,
        *,
        actor: str,
        create: bool = False,
        expected: int | None = None,
        key: str | None = None,
        archived: bytes | None = None,
    ) -> WriteResult:
        """Create (``create=True``, 409 when present) or replace a document.

        ``doc`` is validated (server-owned fields are ignored); ``key``, when
        given, is the key from the URL and must match the document's.
        ``archived``: restore from the archive, in the same script: write only
        while the archive holds exactly these bytes for the key (else NotFound),
        and forget them (``store/archive.py``).
        """
        body = _body(doc, key)
        return await self._commit(
            env,
            kind,
            str(body["key"]),
            lambda _cur: body,
            mode="create" if create else "replace",
            expected=expected,
            actor=actor,
            action="create" if create else None,
            archive=("take", archived) if archived is not None else None,
        )

    async def patch(
        self,
        env: str,
        kind: Kind,
        key: str,
        merge: object,
        *,
        actor: str,
        expected: int | None = None,
    ) -> WriteResult:
        """Apply an RFC 7386 JSON merge patch to the current document."""
        if not isinstance(merge, dict):
            raise ValidationError([("", "a merge patch must be a JSON object")])

        def compute(cur: dict[str, Any] | None) -> dict[str, Any]:
            assert cur is not None
            merged = merge_patch(cur, merge)
            if not isinstance(merged, dict):  # pragma: no cover - merge of two objects
                raise ValidationError([("", "a merge patch must produce an object")])
            return _body(merged, key)

        return await self._commit(
            env, kind, key, compute, mode="update", expected=expected, actor=actor
        )

    async def delete(
        self,
        env: str,
        kind: Kind,
        key: str,
        *,
        actor: str,
        expected: int | None = None,
        archive: bool = False,
    ) -> WriteResult:
        """Delete a document; ``archive`` keeps it in the archive in the same script."""
        return await self._commit(
            env,
            kind,
            key,
            lambda _cur: None,
            mode="delete",
            expected=expected,
            actor=actor,
            archive=("save", b"") if archive else None,
        )

    async def apply(
        self, env: str, items: list[ApplyItem], *, actor: str, name: str
    ) -> ApplyResult:
        """Write many flags and segments as one atomic change: every one of them or none.

        See ``store/apply.py``; used by ``flagwire apply`` (flags as code).
        """
        return await self._applier.apply(env, items, actor=actor, name=name)

    @_translated
    async def history(self, env: str, kind: Kind, key: str) -> list[dict[str, Any]]:
        """Previous versions of a document, newest first (the current one excluded)."""
        raw = await self.redis.lrange(self._history_key(env, kind, key), 0, HISTORY_CAP - 1)
        docs = [d for d in (_loads(v) for v in raw) if d is not None]
        if not docs and not await self.redis.hexists(self._docs_key(env, kind), key):
            await self._require_env(env)
            raise NotFound(f"{kind} {key!r} has no history in {env!r}")
        return docs

    async def restore(
        self,
        env: str,
        kind: Kind,
        key: str,
        version: int,
        *,
        actor: str,
        expected: int | None = None,
    ) -> WriteResult:
        """Write version ``version`` of a document again, as a new change."""
        candidates = await self.history(env, kind, key)
        with contextlib.suppress(NotFound):
            candidates.insert(0, await self.get_doc(env, kind, key))
        old = next((d for d in candidates if d.get("version") == version), None)
        if old is None:
            raise NotFound(f"{kind} {key!r} has no version {version} in its history")
        body = _body(old, key)
        return await self._commit(
            env,
            kind,
            key,
            lambda _cur: body,
            mode="replace",
            expected=expected,
            actor=actor,
            action="restore",
        )

    async def copy(
        self, env: str, kind: Kind, key: str, to: str, *, actor: str, expected: int | None = None
    ) -> WriteResult:
        """Create or replace ``key`` in environment ``to`` with its document from ``env``."""
        body = _body(await self.get_doc(env, kind, key), key)
        return await self._commit(
            to,
            kind,
            key,
            lambda _cur: body,
            mode="replace",
            expected=expected,
            actor=actor,
            action="copy",
        )

    @_translated
    async def audit(
        self, env: str, limit: int = 50, before: str | None = None
    ) -> tuple[list[AuditEntry], str | None]:
        """Audit entries newest first; returns ``(entries, cursor for the next page)``."""
        await self._require_env(env)
        top = stream_before(before)
        if top is None:
            return [], None
        raw: list[Any] = list(
            await self.redis.xrevrange(self.keyspace.audit(env), max=top, min="-", count=limit + 1)
            or []
        )
        entries = [_audit_entry(as_str(i), f) for i, f in raw[:limit]]
        return entries, (entries[-1].id if len(raw) > limit and entries else None)

    # --- the one write path ------------------------------------------------

    async def _commit(
        self,
        env: str,
        kind: Kind,
        key: str,
        compute: Compute,
        *,
        mode: Mode,
        expected: int | None,
        actor: str,
        action: str | None = None,
        archive: Archive | None = None,
    ) -> WriteResult:
        return await self._writer.commit(
            env,
            kind,
            key,
            compute,
            mode=mode,
            expected=expected,
            actor=actor,
            action=action,
            archive=archive,
        )
