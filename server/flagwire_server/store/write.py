"""The one write path of a flag or segment: one Lua script, in one round trip.

Why a module of its own: every single-document write (create, replace, merge
patch, delete, restore, copy) goes through :meth:`Writer.commit`, and it is the
part of the store that must be fast (issue 16) as well as right, so it is kept
apart from the reads and the environments in ``documents.py``.

A write needs the document it changes: a merge patch is applied to it, the new
flag version is its version plus one, ``created_at`` is kept from it.  Reading
it (HGET) before the script cost each write a second round trip, as much server
CPU as the script's own (bench/results/write-profile.md).  So this process
keeps the bytes of each document it last read or wrote (:class:`DocCache`,
bounded in bytes), builds the new document from them, and sends their SHA-1
with the script.  The script compares it with the SHA-1 of what is stored, so a
document changed meanwhile by another process, by an apply, or by a deleted
and re-created environment is never built upon: the script answers ``stale``
with the stored bytes and writes nothing, and the write is built again from
those.  A refusal (already exists, missing, version conflict, invalid) or a
patch that changes nothing is only ever decided on bytes just read from Redis,
never on the cache.

Writes to one document in this process queue on a per-document lock; writes
to different documents never wait for each other.  The script's checks guard
against writers in other processes.
"""

from __future__ import annotations

import asyncio
import random
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from flagwire.core.errors import ValidationError
from flagwire.core.limits import KEY_RE, MAX_SERVER_FRAME
from flagwire.core.protocol import patch_template
from flagwire_server.store.doccache import DOC_CACHE_BYTES, DocCache, DocId, sha1_hex, stored_bytes
from flagwire_server.store.keyspace import Keyspace
from flagwire_server.store.types import (
    AlreadyExists,
    Conflict,
    Kind,
    NotFound,
    SnapshotTooLarge,
    StoreCorrupt,
    WriteResult,
    _action,
    _body,
    _loads,
    _now,
    _script,
    _translated,
    _version_of,
    as_str,
    validate_doc,
)

__all__ = [
    "AUDIT_MAXLEN",
    "CHANGES_MAXLEN",
    "HISTORY_CAP",
    "MAX_SNAPSHOT_DOCS",
    "Archive",
    "Compute",
    "Mode",
    "Writer",
]

CHANGES_MAXLEN: Final = 10_000
HISTORY_CAP: Final = 100
AUDIT_MAXLEN: Final = 10_000
_RETRIES: Final = 8
#: The documents of one snapshot may fill the client's frame limit but for this much
#: (the snapshot's own fields: type, env, epoch, version).
SNAPSHOT_HEADROOM: Final = 1024
MAX_SNAPSHOT_DOCS: Final = MAX_SERVER_FRAME - SNAPSHOT_HEADROOM

#: ARGV[11..14] of write.lua, encoded once.
_LIMITS: Final = tuple(
    b"%d" % n for n in (CHANGES_MAXLEN, HISTORY_CAP, AUDIT_MAXLEN, MAX_SNAPSHOT_DOCS)
)
Mode = Literal["create", "replace", "update", "delete"]
#: The archive step of a write (``scripts/write.lua``, ARGV 16-17).
Archive = tuple[Literal["save", "take"], bytes]
Compute = Callable[[dict[str, Any] | None], dict[str, Any] | None]


@dataclass(frozen=True, slots=True)
class _Step:
    """A write built from one read of the document, ready for the script."""

    new: dict[str, Any] | None
    new_raw: bytes | None
    version: int  # the document's version after the write
    args: list[bytes]


class Writer:
    """Single-document writes of one store (see the module docstring).

    Args:
        redis: the store's asyncio Redis client.
        keyspace: where its keys are.
        cache_bytes: bound of the :class:`DocCache`.
    """

    def __init__(
        self, redis: aioredis.Redis, keyspace: Keyspace, *, cache_bytes: int = DOC_CACHE_BYTES
    ) -> None:
        self.redis = redis
        self.keyspace = keyspace
        self.cache = DocCache(cache_bytes)
        self._source = _script("write")
        self._sha = sha1_hex(self._source.encode())
        # Held by each writer in a local: the table keeps a lock only while someone does.
        self._locks: weakref.WeakValueDictionary[DocId, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    @_translated
    async def commit(
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
        """Write what ``compute`` makes of the current document (None deletes it).

        ``archive``: ``("save", b"")`` keeps a deleted document in the environment's
        archive, ``("take", saved)`` writes only while the archive holds ``saved`` for
        the key and forgets it, in the same script (``store/archive.py``).

        Raises:
            ValidationError: ``key`` or the computed document is invalid.
            AlreadyExists: ``create`` of a document that exists.
            NotFound: the environment, or the document to update or delete, is missing
                (or, for ``take``, the archived copy).
            Conflict: ``expected`` is not the current version, or writers kept racing.
            SnapshotTooLarge: the environment's snapshot would outgrow a client's frame.
            StoreCorrupt: a key of the wrong type; nothing was written.
        """
        if not KEY_RE.match(key):
            raise ValidationError([("key", f"{key[:140]!r} is not a valid key")])
        lock = self._locks.setdefault((env, kind, key), asyncio.Lock())
        async with lock:
            return await self._commit(
                env, kind, key, compute, mode, expected, actor, action, archive
            )

    async def _commit(
        self,
        env: str,
        kind: Kind,
        key: str,
        compute: Compute,
        mode: Mode,
        expected: int | None,
        actor: str,
        action: str | None,
        archive: Archive | None = None,
    ) -> WriteResult:
        doc_id: DocId = (env, kind, key)
        cached = self.cache.get(doc_id)
        if cached is None:
            raw, sha, confirmed = await self._read(doc_id)
        else:
            (raw, sha), confirmed = cached, False
        for attempt in range(_RETRIES):
            try:
                step = await self._build(doc_id, raw, sha, compute, mode, expected, actor, action)
            except (AlreadyExists, NotFound, Conflict, ValidationError):
                if confirmed:
                    raise
                step = None
            if step is None or isinstance(step, WriteResult):
                if confirmed:
                    assert step is not None
                    return step  # a merge patch that changes nothing
                # Refused, or unchanged, judging by the cache: decide again on what is stored.
                raw, sha, confirmed = await self._read(doc_id)
                step = await self._build(doc_id, raw, sha, compute, mode, expected, actor, action)
                if isinstance(step, WriteResult):
                    return step
            cur = _loads(raw)
            res = await self._run(
                [
                    self.keyspace.meta(env),
                    self.keyspace.docs(env, kind),
                    self.keyspace.changes(env),
                    self.keyspace.history(env, kind, key),
                    self.keyspace.audit(env),
                    self.keyspace.docs(env, "segment" if kind == "flag" else "flag"),
                    *((self.keyspace.archive(env),) if archive else ()),
                ],
                [*step.args, archive[0].encode(), archive[1]] if archive else step.args,
            )
            status = as_str(res[0])
            if status == "ok":
                self.cache.put(doc_id, step.new_raw)
                return WriteResult(
                    kind,
                    key,
                    step.new,
                    step.version,
                    int(as_str(res[1])),
                    int(as_str(res[2])),
                    cur,
                )
            if status == "stale":
                # Changed since this process last saw it: build again on the stored bytes.
                raw = stored_bytes(res[2])
                sha, confirmed = sha1_hex(raw), True
                self.cache.put(doc_id, raw, sha)
                continue
            self.cache.put(doc_id, None)
            self._refused(env, kind, key, res)
            if expected is not None or attempt == _RETRIES - 1:
                now_version = int(as_str(res[1]))
                raise Conflict(
                    f"{kind} {key!r} changed concurrently (now version {now_version})",
                    now_version,
                )
            await asyncio.sleep(random.uniform(0, 0.005 * (attempt + 1)))
            raw, sha, confirmed = await self._read(doc_id)
        now_version = _version_of(_loads(raw))
        raise Conflict(
            f"{kind} {key!r} changed concurrently (now version {now_version})", now_version
        )

    async def _read(self, doc_id: DocId) -> tuple[bytes | None, str, bool]:
        env, kind, key = doc_id
        raw = stored_bytes(await self.redis.hget(self.keyspace.docs(env, kind), key))
        sha = sha1_hex(raw)
        self.cache.put(doc_id, raw, sha)
        return raw, sha, True

    async def _build(
        self,
        doc_id: DocId,
        raw: bytes | None,
        sha: str,
        compute: Compute,
        mode: Mode,
        expected: int | None,
        actor: str,
        action: str | None,
    ) -> _Step | WriteResult:
        """The write to send given the stored bytes ``raw`` (a WriteResult: nothing to write).

        The script's arguments are listed at the top of ``scripts/write.lua``.
        """
        env, kind, key = doc_id
        cur = _loads(raw)
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
        if cur is not None:
            base = cur_version
        else:
            hist = await self.redis.lindex(self.keyspace.history(env, kind, key), 0)
            base = _version_of(_loads(hist))
        body = compute(cur)
        new: dict[str, Any] | None = None
        new_raw: bytes | None = None
        if body is not None:
            new = validate_doc(kind, body)
            if mode == "update" and cur is not None and _same(key, cur, new):
                return await self._unchanged(env, kind, key, cur)
            now = _now()
            new["version"] = base + 1
            new["created_at"] = cur.get("created_at", now) if cur else now
            new["updated_at"] = now
            new["updated_by"] = actor
            new_raw = orjson.dumps(new)
        prefix, suffix = patch_template(kind, key, new)
        version = base + 1 if new is not None else cur_version
        return _Step(
            new,
            new_raw,
            version,
            [
                key.encode(),
                mode.encode(),
                b"%d" % cur_version,
                new_raw if new_raw is not None else b"",
                prefix,
                suffix,
                actor.encode("utf-8", "surrogatepass"),
                (action or _action(mode, cur)).encode(),
                kind.encode(),
                b"%d" % version,
                *_LIMITS,
                sha.encode(),
            ],
        )

    async def _run(self, keys: list[str], args: list[bytes]) -> Any:
        """EVALSHA of ``write.lua`` (loading it first on a Redis that lost it).

        Why not redis-py's ``Script`` object: its call re-encoded every argument and
        went through two more layers per write, a tenth of the write's CPU here.
        """
        try:
            return await self.redis.execute_command(  # type: ignore[no-untyped-call]
                "EVALSHA", self._sha, len(keys), *keys, *args
            )
        except NoScriptError:
            await self.redis.script_load(self._source)
            return await self.redis.execute_command(  # type: ignore[no-untyped-call]
                "EVALSHA", self._sha, len(keys), *keys, *args
            )

    async def _require_env(self, env: str) -> None:
        if not await self.redis.exists(self.keyspace.meta(env)):
            raise NotFound(f"environment {env!r} does not exist")

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

    def _refused(self, env: str, kind: Kind, key: str, res: list[Any]) -> None:
        """Raise for the script's refusals; return for a version conflict."""
        status = as_str(res[0])
        if status == "noenv":
            raise NotFound(f"environment {env!r} does not exist")
        if status == "missing":
            raise NotFound(f"{kind} {key!r} does not exist in {env!r}")
        if status == "toolarge":
            raise SnapshotTooLarge(int(as_str(res[1])), MAX_SNAPSHOT_DOCS)
        if status == "corrupt":
            raise StoreCorrupt(f"key {as_str(res[1])} has an unexpected type; nothing was written")
        if status == "exists":
            raise AlreadyExists(f"{kind} {key!r} already exists", int(as_str(res[1])))
        if status == "unarchived":
            raise NotFound(f"no archived {kind} {key!r} in {env!r} (restored meanwhile?)")
        if status != "conflict":
            raise StoreCorrupt(f"the write script answered {status!r}; nothing was written")


def _same(key: str, cur: dict[str, Any], new: dict[str, Any]) -> bool:
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
