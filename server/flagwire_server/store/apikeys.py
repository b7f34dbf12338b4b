"""API keys: created once, stored only as SHA-256 hashes, checked from memory.

Why: every stream handshake and admin request authenticates, so the check
must not cost a Redis round trip; and a leaked Redis dump must not leak
usable keys.  A secret (``fw_sdk_…`` / ``fw_client_…`` / ``fw_admin_…``, 32 random URL-safe
characters) is shown to its creator once; Redis keeps only
``sha256(secret)`` hex in ``P:sys:{keys}:byhash`` and the record in
``P:sys:{keys}:records``.  Every instance keeps all records in memory and polls
``P:sys:{keys}:version`` (bumped by every create and revoke) about every 250 ms;
when a key disappears or is revoked it calls the ``on_revoke`` callbacks, so
streams of a revoked key close within a second on every instance.

``FLAGWIRE_ADMIN_KEY`` (``admin_key``) is always accepted as an admin key;
like every other comparison it is made in constant time.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import inspect
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, Final, Literal

import orjson
import redis.asyncio as aioredis
import redis.exceptions

from flagwire.core.errors import ValidationError
from flagwire.core.limits import ENV_RE
from flagwire_server.background import stop_requested
from flagwire_server.store.documents import StoreUnavailable
from flagwire_server.store.keyspace import Keyspace

__all__ = ["ENV_ADMIN_ID", "KeyRecord", "KeyRing"]

log = logging.getLogger("flagwire.keys")

KeyKind = Literal["admin", "sdk", "client"]
#: The id of the record that stands for ``FLAGWIRE_ADMIN_KEY``.
ENV_ADMIN_ID: Final = "admin-env"
_NAME_RE: Final = re.compile(r"^[^\x00-\x1f\x7f]{1,100}\Z")
_SHOWN: Final = 4  # random characters of the secret kept as a recognisable prefix


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A key as everyone but its holder sees it (no secret, no hash)."""

    id: str
    name: str
    kind: KeyKind
    env: str | None
    prefix: str
    created_at: str
    revoked_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


RevokeCallback = Callable[[str], Awaitable[None] | None]


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class KeyRing:
    """The key records of one Redis, cached in memory and kept fresh by polling.

    Args:
        redis: an asyncio Redis client.
        prefix: the key prefix ``P``.
        admin_key: ``FLAGWIRE_ADMIN_KEY``; always accepted as an admin key.
        poll_interval: seconds between checks of ``P:sys:{keys}:version``.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str = "fw",
        *,
        admin_key: str | None = None,
        poll_interval: float = 0.25,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.keyspace = Keyspace(prefix)
        self.admin_key = admin_key or None
        self.poll_interval = poll_interval
        self._records: dict[str, KeyRecord] = {}
        self._hashes: dict[str, str] = {}  # sha256 hex -> key id (live keys only)
        self._revoked: set[str] = set()
        self._version: bytes | str | None = None
        self._callbacks: list[RevokeCallback] = []
        self._task: asyncio.Task[None] | None = None
        # Held while the in-memory copy is replaced or a local write lands, so that
        # a reload that started before a create cannot drop the new key.
        self._lock = asyncio.Lock()
        self._admin_record = KeyRecord(
            id=ENV_ADMIN_ID,
            name="admin (FLAGWIRE_ADMIN_KEY)",
            kind="admin",
            env=None,
            prefix="fw_admin_env",
            created_at="",
        )

    def _k(self, suffix: Literal["records", "byhash", "version"]) -> str:
        return self.keyspace.keyring(suffix)

    # --- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        """Load every record and start polling for changes (idempotent)."""
        try:
            await self.refresh()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            log.warning("keys: store unavailable at start; will keep polling")
        if self._task is None:
            self._task = asyncio.create_task(self._poll(), name="flagwire-keyring")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def on_revoke(self, callback: RevokeCallback) -> None:
        """Call ``callback(key_id)`` (sync or async) whenever a key is revoked or removed."""
        self._callbacks.append(callback)

    async def _poll(self) -> None:
        while not stop_requested():
            await asyncio.sleep(self.poll_interval)
            try:
                version = await self.redis.get(self._k("version"))
                if version != self._version:
                    await self.refresh()
            except asyncio.CancelledError:
                raise
            except (redis.exceptions.RedisError, OSError) as exc:
                log.debug("keys: poll failed: %s", exc)
            except Exception:  # a bug here must not stop revocations for good
                log.exception("keys: poll failed")

    async def refresh(self) -> None:
        """Reload every record from Redis and fire callbacks for newly revoked keys."""
        async with self._lock:
            gone = await self._reload()
        for key_id in gone:
            await self._fire(key_id)

    async def _reload(self) -> list[str]:
        version = await self.redis.get(self._k("version"))
        raw = await self.redis.hgetall(self._k("records"))
        records: dict[str, KeyRecord] = {}
        hashes: dict[str, str] = {}
        for value in raw.values():
            data = orjson.loads(value)
            rec = _record(data)
            records[rec.id] = rec
            if rec.revoked_at is None and isinstance(data.get("hash"), str):
                hashes[data["hash"]] = rec.id
        gone = [
            key_id
            for key_id in self._records
            if key_id not in self._revoked
            and (key_id not in records or records[key_id].revoked_at is not None)
        ]
        self._records, self._hashes, self._version = records, hashes, version
        self._revoked.update(k for k, r in records.items() if r.revoked_at is not None)
        self._revoked.update(gone)
        return gone

    async def _fire(self, key_id: str) -> None:
        for cb in list(self._callbacks):
            try:
                result = cb(key_id)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("keys: on_revoke callback failed")

    # --- checks ---------------------------------------------------------------

    def authenticate(self, secret: str) -> KeyRecord | None:
        """The live record for ``secret``, or None (unknown, revoked, malformed).

        Synchronous and Redis-free: it answers from the in-memory copy, which is
        at most one poll interval old for keys created on other instances.
        """
        if not isinstance(secret, str) or not secret or len(secret) > 256:
            return None
        if self.admin_key is not None and hmac.compare_digest(
            secret.encode("utf-8", "surrogatepass"), self.admin_key.encode()
        ):
            return self._admin_record
        digest = hash_secret(secret)
        key_id = self._hashes.get(digest)
        if key_id is None:
            return None
        rec = self._records.get(key_id)
        if rec is None or rec.revoked_at is not None:
            return None
        return rec

    def get(self, key_id: str) -> KeyRecord | None:
        return self._records.get(key_id)

    # --- administration -------------------------------------------------------

    async def create(self, name: str, kind: str, env: str | None = None) -> tuple[KeyRecord, str]:
        """Create a key; returns its record and its secret (shown only this once).

        Raises:
            ValidationError: a bad name, kind, or environment (an SDK key needs one).
            StoreUnavailable: Redis is unreachable.
        """
        problems: list[tuple[str, str]] = []
        if not isinstance(name, str) or not _NAME_RE.match(name):
            problems.append(("name", "expected 1-100 printable characters"))
        if kind not in ("admin", "sdk", "client"):
            problems.append(("kind", 'expected "sdk", "client" or "admin"'))
        if kind in ("sdk", "client") and (not isinstance(env, str) or not ENV_RE.match(env)):
            what = "an SDK" if kind == "sdk" else "a client-side"
            problems.append(("env", f"{what} key needs the environment it may read"))
        if kind == "admin" and env is not None:
            problems.append(("env", "admin keys are not bound to an environment"))
        if problems:
            raise ValidationError(problems)
        secret = f"fw_{kind}_{secrets.token_urlsafe(24)}"  # 24 bytes -> 32 characters
        rec = KeyRecord(
            id=f"key_{secrets.token_hex(6)}",
            name=name,
            kind=kind,  # type: ignore[arg-type]
            env=env if kind != "admin" else None,
            prefix=secret[: len(f"fw_{kind}_") + _SHOWN],
            created_at=_now(),
        )
        digest = hash_secret(secret)
        data = orjson.dumps({**rec.to_json(), "hash": digest})
        try:
            async with self._lock, self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(self._k("records"), rec.id, data)
                pipe.hset(self._k("byhash"), digest, rec.id)
                pipe.incr(self._k("version"))
                await pipe.execute()
                self._records[rec.id] = rec
                self._hashes[digest] = rec.id
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise StoreUnavailable(f"store unavailable: {exc}") from None
        return rec, secret

    async def list_keys(self) -> list[KeyRecord]:
        """Every key (revoked ones too), oldest first, read from Redis."""
        try:
            raw = await self.redis.hgetall(self._k("records"))
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise StoreUnavailable(f"store unavailable: {exc}") from None
        recs = [_record(orjson.loads(v)) for v in raw.values()]
        return sorted(recs, key=lambda r: (r.created_at, r.id))

    async def revoke(self, key_id: str) -> KeyRecord | None:
        """Revoke a key; returns its record, or None when there is no such live key."""
        try:
            raw = await self.redis.hget(self._k("records"), key_id)
            if raw is None:
                return None
            data = orjson.loads(raw)
            if data.get("revoked_at"):
                return None
            data["revoked_at"] = _now()
            rec = _record(data)
            async with self._lock, self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(self._k("records"), key_id, orjson.dumps(data))
                if isinstance(data.get("hash"), str):
                    pipe.hdel(self._k("byhash"), data["hash"])
                pipe.incr(self._k("version"))
                await pipe.execute()
                self._records[key_id] = rec
                self._hashes = {h: k for h, k in self._hashes.items() if k != key_id}
                fire = key_id not in self._revoked
                self._revoked.add(key_id)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise StoreUnavailable(f"store unavailable: {exc}") from None
        if fire:
            await self._fire(key_id)
        return rec


def _record(data: dict[str, Any]) -> KeyRecord:
    return KeyRecord(
        id=str(data["id"]),
        name=str(data.get("name", "")),
        kind=data["kind"] if data.get("kind") in ("admin", "client") else "sdk",
        env=data.get("env"),
        prefix=str(data.get("prefix", "")),
        created_at=str(data.get("created_at", "")),
        revoked_at=data.get("revoked_at") or None,
    )
