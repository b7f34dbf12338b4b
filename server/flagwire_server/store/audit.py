"""The instance-wide audit trail: events that belong to no environment.

Why a log of its own: flag and segment writes are audited inside their
environment, atomically with the change (``write.lua``), and an environment's
audit goes when the environment is deleted.  Creating or deleting that
environment, creating or revoking API keys, console sign-ins (failed ones
too), sign-outs and a rotated ``FLAGWIRE_ADMIN_KEY`` outlive any environment,
so they go to ``P:sys:audit`` (a stream, ``MAXLEN ~ 10000``): who, when, from
which address, what.  Nothing secret is ever written: never a key, only its
id and name; a failed sign-in records why it failed, not what was typed.

Rotation: ``P:sys:adminkey`` keeps a salted PBKDF2 digest of the admin key
(slow, because an operator's key may be guessable; the salt is random), so a
start with a different value is noticed and audited once, even across a
rolling restart of many instances.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from typing import Any, Final

import orjson
import redis.asyncio as aioredis

from flagwire_server.store.keyspace import Keyspace
from flagwire_server.store.types import as_str, stream_before

__all__ = ["AUDIT_MAXLEN", "InstanceAudit", "InstanceAuditEntry"]

log = logging.getLogger("flagwire.audit")

AUDIT_MAXLEN: Final = 10_000
_PBKDF2_ROUNDS: Final = 200_000


@dataclass(frozen=True, slots=True)
class InstanceAuditEntry:
    """One instance-wide event: ``kind`` is environment, key, session or admin_key."""

    id: str
    at_ms: int
    actor: str
    action: str
    kind: str
    key: str
    address: str
    detail: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        at = dt.datetime.fromtimestamp(self.at_ms / 1000, dt.UTC)
        return {
            "id": self.id,
            "at": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "actor": self.actor,
            "action": self.action,
            "kind": self.kind,
            "key": self.key,
            "address": self.address,
            "detail": self.detail,
        }


def _entry(entry_id: Any, fields: dict[Any, Any]) -> InstanceAuditEntry:
    f = {as_str(k): as_str(v) for k, v in fields.items()}
    try:
        detail = orjson.loads(f.get("detail") or "{}")
    except orjson.JSONDecodeError:
        detail = {}
    eid = as_str(entry_id)
    return InstanceAuditEntry(
        id=eid,
        at_ms=int(eid.partition("-")[0] or 0),
        actor=f.get("actor", ""),
        action=f.get("action", ""),
        kind=f.get("kind", ""),
        key=f.get("key", ""),
        address=f.get("address", ""),
        detail=detail if isinstance(detail, dict) else {},
    )


def _digest(secret: str, salt: bytes) -> str:
    return hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, _PBKDF2_ROUNDS).hex()


class InstanceAudit:
    """Append to and page through ``P:sys:audit``.

    Args:
        redis: an asyncio Redis client.
        keyspace: the key names.
    """

    def __init__(self, redis: aioredis.Redis, keyspace: Keyspace) -> None:
        self.redis = redis
        self.keyspace = keyspace

    async def record(
        self,
        *,
        actor: str,
        action: str,
        kind: str,
        key: str,
        address: str,
        detail: dict[str, Any] | None = None,
    ) -> str:
        """Append one entry; returns its id (``<ms>-<n>``, the time it was written)."""
        entry_id = await self.redis.xadd(
            self.keyspace.audit_log,
            {
                "actor": actor[:200],
                "action": action,
                "kind": kind,
                "key": key[:200],
                "address": address[:100],
                "detail": orjson.dumps(detail or {}),
            },
            maxlen=AUDIT_MAXLEN,
            approximate=True,
        )
        return as_str(entry_id)

    async def page(
        self, limit: int = 50, before: str | None = None
    ) -> tuple[list[InstanceAuditEntry], str | None]:
        """Entries newest first; returns ``(entries, cursor for the next page)``."""
        top = stream_before(before)
        if top is None:
            return [], None
        raw: list[Any] = list(
            await self.redis.xrevrange(self.keyspace.audit_log, max=top, min="-", count=limit + 1)
            or []
        )
        entries = [_entry(i, f) for i, f in raw[:limit]]
        return entries, (entries[-1].id if len(raw) > limit and entries else None)

    async def note_admin_key(self, admin_key: str | None, *, address: str) -> str | None:
        """Audit a ``FLAGWIRE_ADMIN_KEY`` that changed since the last start.

        Returns the action recorded (``set``, ``rotate``, ``unset``) or None when
        nothing changed.  Call it under the bootstrap lock so that many
        processes starting at once record one rotation.
        """
        name = self.keyspace.admin_key_check
        stored = {as_str(k): as_str(v) for k, v in (await self.redis.hgetall(name)).items()}
        salt_hex, digest = stored.get("salt", ""), stored.get("digest", "")
        if admin_key is None:
            if not digest:
                return None
            await self.redis.delete(name)
            action = "unset"
        else:
            if digest:
                mine = await asyncio.to_thread(_digest, admin_key, bytes.fromhex(salt_hex))
                if hmac.compare_digest(mine, digest):
                    return None
            salt = secrets.token_bytes(16)
            mine = await asyncio.to_thread(_digest, admin_key, salt)
            await self.redis.hset(name, mapping={"salt": salt.hex(), "digest": mine})
            action = "rotate" if digest else "set"
        await self.record(
            actor="FLAGWIRE_ADMIN_KEY",
            action=action,
            kind="admin_key",
            key="admin-env",
            address=address,
            detail={"note": "the admin key in the server's environment changed since last start"},
        )
        log.warning("audit: FLAGWIRE_ADMIN_KEY %s since the last start", action)
        return action
