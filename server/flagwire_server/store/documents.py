"""The Redis flag store: every change is one atomic Lua script.

Why this shape: a client that sees environment version ``n`` must be able to
trust that the flags it holds are exactly Redis's flags at ``n`` and that the
change log holds an entry for every version.  So a write bumps the version,
stores the document, appends the encoded change message (``<version>-0`` in
``P:{env}:changes``), records the previous document in the history list and
adds an audit entry in one script — all of it or none of it.

The new document carries its own flag ``version`` and the change message
carries the new environment version, so the document is built here in Python
from the one just read, and the script re-checks that the flag version it
finds is still the one read (optimistic concurrency).  When the caller gave
no expected version a lost race is retried a few times; when they did, it is
a :class:`Conflict`.  Validation runs before the script, so nothing is
written for an invalid document.

Key layout: see ``docs/design.md`` (Storage).  Segment history lives in
``P:{env}:seghistory:<key>``.

Errors, results and the pure helpers live in ``store_types`` (re-exported here).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import weakref
from collections.abc import Callable
from typing import Any, Final, Literal

import orjson
import redis.asyncio as aioredis

from flagwire.core.errors import ValidationError
from flagwire.core.limits import ENV_RE, KEY_RE, MAX_SERVER_FRAME
from flagwire.core.protocol import patch_template
from flagwire_server.store.apply import Applier, ApplyItem, ApplyResult
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
    _action,
    _audit_entry,
    _body,
    _loads,
    _now,
    _pairs,
    _script,
    _translated,
    _version_of,
    as_str,
    merge_patch,
    stream_before,
    validate_doc,
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


def _same(kind: Kind, key: str, cur: dict[str, Any], new: dict[str, Any]) -> bool:
    """True when ``new`` is the stored ``cur`` apart from the server's bookkeeping.

    Why no validation of ``cur`` here: every stored document is the model's
    normalised copy (``validate_doc``'s output plus the server's fields), so a plain
    comparison answers, and validating it again cost each write as much as its own
    validation (bench/results/write-profile.md).  A document stored un-normalised by
    an older server compares unequal once and is written normalised.
    """
    try:
        return _body(cur, key) == new
    except ValidationError:  # a stored document without a usable key: not the same
        return False


CHANGES_MAXLEN: Final = 10_000
HISTORY_CAP: Final = 100
AUDIT_MAXLEN: Final = 10_000
_RETRIES: Final = 8
#: The documents of one snapshot may fill the client's frame limit but for this much
#: (the snapshot's own fields: type, env, epoch, version).
SNAPSHOT_HEADROOM: Final = 1024
MAX_SNAPSHOT_DOCS: Final = MAX_SERVER_FRAME - SNAPSHOT_HEADROOM


class Store:
    """Flags, segments, environments, history and audit in one Redis.

    Args:
        redis: an asyncio Redis client (``decode_responses`` either way).
        prefix: the key prefix ``P`` (``FLAGWIRE_REDIS_PREFIX``).
    """

    def __init__(self, redis: aioredis.Redis, prefix: str = "fw") -> None:
        self.redis = redis
        self._prefix = prefix
        self.keyspace = Keyspace(prefix)
        self._write = redis.register_script(_script("write"))
        self._load = redis.register_script(_script("load"))
        self._create_env = redis.register_script(_script("create_env"))
        self._applier = Applier(
            redis,
            self.keyspace,
            changes_maxlen=CHANGES_MAXLEN,
            history_cap=HISTORY_CAP,
            audit_maxlen=AUDIT_MAXLEN,
            max_snapshot=MAX_SNAPSHOT_DOCS,
        )
        # Writers of one document in this process queue up instead of racing; the
        # optimistic check in the script still guards against other processes.
        self._locks: weakref.WeakValueDictionary[tuple[str, str, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
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

    # --- environments -------------------------------------------------------

    @_translated
    async def list_envs(self) -> list[dict[str, Any]]:
        """Every environment's ``{key, name, created_at}``, sorted by key."""
        raw = await self.redis.hgetall(self.keyspace.envs)
        envs = [doc for doc in (_loads(v) for v in raw.values()) if doc is not None]
        return sorted(envs, key=lambda e: str(e.get("key", "")))

    @_translated
    async def get_env(self, env: str) -> dict[str, Any]:
        """``{key, name, created_at, version, epoch}``; raises :class:`NotFound`."""
        raw, meta = await self._env_info(env)
        if meta is None:
            raise NotFound(f"environment {env!r} does not exist")
        info = raw or {"key": env, "name": env, "created_at": meta.get("created_at", "")}
        return {**info, "version": int(meta.get("version", "0")), "epoch": meta.get("epoch", "")}

    async def _env_info(self, env: str) -> tuple[dict[str, Any] | None, dict[str, str] | None]:
        raw = await self.redis.hget(self.keyspace.envs, env)
        meta_raw = await self.redis.hgetall(self.keyspace.meta(env))
        meta = {as_str(k): as_str(v) for k, v in meta_raw.items()} if meta_raw else None
        return _loads(raw), meta

    @_translated
    async def create_env(self, key: str, name: str = "") -> dict[str, Any]:
        """Create an environment at version 0 with a fresh epoch.

        Raises:
            ValidationError: ``key`` is not a valid environment key.
            AlreadyExists: it exists.
        """
        if not isinstance(key, str) or not ENV_RE.match(key):
            raise ValidationError([("key", "expected 1-64 of a-z 0-9 _ - starting alphanumeric")])
        if not isinstance(name, str) or len(name) > 200:
            raise ValidationError([("name", "expected a string of at most 200 characters")])
        ks = self.keyspace
        created_at = _now()
        listing = orjson.dumps({"key": key, "name": name or key, "created_at": created_at})
        made = await self._create_env(
            keys=[
                ks.meta(key),
                ks.docs(key, "flag"),
                ks.docs(key, "segment"),
                ks.changes(key),
                ks.audit(key),
            ],
            args=[secrets.token_hex(8), created_at],
        )
        envs_key = self.keyspace.envs
        if not int(made):
            # The meta exists; repair a missing listing entry (a crash between the two writes).
            if await self.redis.hsetnx(envs_key, key, listing):
                return await self.get_env(key)
            raise AlreadyExists(f"environment {key!r} already exists", 0)
        await self.redis.hset(envs_key, key, listing)
        return await self.get_env(key)

    async def ensure_env(self, key: str, name: str = "") -> bool:
        """Create the environment unless it exists; True when it was created."""
        try:
            await self.create_env(key, name)
        except AlreadyExists:
            return False
        return True

    @_translated
    async def delete_env(self, env: str) -> None:
        """Delete an environment and every key it owns; raises :class:`NotFound`."""
        # The meta goes first: from here on the environment does not exist for writers,
        # and a create of the same name starts from empty keys (see create_env.lua).
        gone = await self.redis.unlink(self.keyspace.meta(env))
        removed = await self.redis.hdel(self.keyspace.envs, env)
        if not removed and not gone:
            raise NotFound(f"environment {env!r} does not exist")
        batch: list[Any] = []
        async for k in self.redis.scan_iter(match=self.keyspace.env_pattern(env), count=500):
            batch.append(k)
            if len(batch) >= 500:
                await self.redis.unlink(*batch)
                batch.clear()
        if batch:
            await self.redis.unlink(*batch)

    @_translated
    async def load_env(self, env: str) -> EnvState:
        """Version, epoch, flags and segments of ``env`` read atomically (one script)."""
        res = await self._load(
            keys=[
                self.keyspace.meta(env),
                self.keyspace.docs(env, "flag"),
                self.keyspace.docs(env, "segment"),
            ]
        )
        if not res:
            raise NotFound(f"environment {env!r} does not exist")
        return EnvState(
            version=int(as_str(res[0])),
            epoch=as_str(res[1]),
            flags=_pairs(res[2]),
            segments=_pairs(res[3]),
        )

    # --- documents ----------------------------------------------------------

    @_translated
    async def list_docs(self, env: str, kind: Kind) -> list[dict[str, Any]]:
        """Every flag (or segment) of ``env`` sorted by key; raises :class:`NotFound`."""
        await self._require_env(env)
        raw = await self.redis.hgetall(self._docs_key(env, kind))
        docs = [d for d in (_loads(v) for v in raw.values()) if d is not None]
        return sorted(docs, key=lambda d: str(d.get("key", "")))

    async def _require_env(self, env: str) -> None:
        """:class:`NotFound` for a missing environment, so that a read of an empty or
        absent one does not answer an empty list or "no such document"."""
        if not await self.redis.exists(self.keyspace.meta(env)):
            raise NotFound(f"environment {env!r} does not exist")

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
    ) -> WriteResult:
        """Create (``create=True``, 409 when present) or replace a document.

        ``doc`` is validated (server-owned fields are ignored); ``key``, when
        given, is the key from the URL and must match the document's.
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
        self, env: str, kind: Kind, key: str, *, actor: str, expected: int | None = None
    ) -> WriteResult:
        return await self._commit(
            env, kind, key, lambda _cur: None, mode="delete", expected=expected, actor=actor
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

    async def _unchanged(self, env: str, kind: Kind, key: str, cur: dict[str, Any]) -> WriteResult:
        """A merge patch that changes nothing: answer with what is there, send nothing.

        Why not write it anyway: every write bumps the environment version and is
        sent to every client, so a repeated kill switch would notify them all.
        """
        raw = await self.redis.hget(self.keyspace.meta(env), "version")
        if raw is None:
            raise NotFound(f"environment {env!r} does not exist")
        cur_version = _version_of(cur)
        return WriteResult(kind, key, cur, cur_version, int(as_str(raw)), 0, cur, changed=False)

    @_translated
    async def _commit(
        self,
        env: str,
        kind: Kind,
        key: str,
        compute: Callable[[dict[str, Any] | None], dict[str, Any] | None],
        *,
        mode: Literal["create", "replace", "update", "delete"],
        expected: int | None,
        actor: str,
        action: str | None = None,
    ) -> WriteResult:
        if not KEY_RE.match(key):
            raise ValidationError([("key", f"{key[:140]!r} is not a valid key")])
        # Held in a local: the lock table keeps its locks only while someone does.
        lock = self._locks.setdefault((env, kind, key), asyncio.Lock())
        async with lock:
            docs_key, hist_key = self._docs_key(env, kind), self._history_key(env, kind, key)
            for attempt in range(_RETRIES):
                if attempt:
                    await asyncio.sleep(random.uniform(0, 0.005 * attempt))
                cur = _loads(await self.redis.hget(docs_key, key))
                cur_version = _version_of(cur)
                if cur is None:
                    await self._require_env(env)
                if mode == "create" and cur is not None:
                    raise AlreadyExists(f"{kind} {key!r} already exists", cur_version)
                if mode in ("update", "delete") and cur is None:
                    raise NotFound(f"{kind} {key!r} does not exist in {env!r}")
                if expected is not None and expected != cur_version:
                    raise Conflict(
                        f"{kind} {key!r} is at version {cur_version}, not {expected}", cur_version
                    )
                # A deleted document's versions continue from its history, so that a
                # version number never names two different documents.
                base = (
                    cur_version
                    if cur is not None
                    else _version_of(_loads(await self.redis.lindex(hist_key, 0)))
                )
                body = compute(cur)
                new: dict[str, Any] | None = None
                if body is not None:
                    new = validate_doc(kind, body)
                    if mode == "update" and cur is not None and _same(kind, key, cur, new):
                        return await self._unchanged(env, kind, key, cur)
                    now = _now()
                    new["version"] = base + 1
                    new["created_at"] = cur.get("created_at", now) if cur else now
                    new["updated_at"] = now
                    new["updated_by"] = actor
                prefix, suffix = patch_template(kind, key, new)
                res = await self._write(
                    keys=[
                        self.keyspace.meta(env),
                        docs_key,
                        self.keyspace.changes(env),
                        hist_key,
                        self.keyspace.audit(env),
                        self.keyspace.docs(env, "segment" if kind == "flag" else "flag"),
                    ],
                    args=[
                        key,
                        mode,
                        cur_version,
                        orjson.dumps(new) if new is not None else b"",
                        prefix,
                        suffix,
                        actor,
                        action or _action(mode, cur),
                        kind,
                        base + 1 if new is not None else cur_version,
                        CHANGES_MAXLEN,
                        HISTORY_CAP,
                        AUDIT_MAXLEN,
                        MAX_SNAPSHOT_DOCS,
                    ],
                )
                status = as_str(res[0])
                if status == "ok":
                    return WriteResult(
                        kind,
                        key,
                        new,
                        base + 1 if new is not None else cur_version,
                        int(as_str(res[1])),
                        int(as_str(res[2])),
                        cur,
                    )
                if status == "noenv":
                    raise NotFound(f"environment {env!r} does not exist")
                if status == "missing":
                    raise NotFound(f"{kind} {key!r} does not exist in {env!r}")
                if status == "toolarge":
                    raise SnapshotTooLarge(int(as_str(res[1])), MAX_SNAPSHOT_DOCS)
                if status == "corrupt":
                    raise StoreCorrupt(
                        f"key {as_str(res[1])} has an unexpected type; nothing was written"
                    )
                now_version = int(as_str(res[1]))
                if status == "exists":
                    raise AlreadyExists(f"{kind} {key!r} already exists", now_version)
                if expected is not None or attempt == _RETRIES - 1:
                    raise Conflict(
                        f"{kind} {key!r} changed concurrently (now version {now_version})",
                        now_version,
                    )
        raise AssertionError("unreachable")  # pragma: no cover
