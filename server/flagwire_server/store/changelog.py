"""Reads of the change log and of the store's identity, for the stream's readers.

The change log of environment ``E`` is the stream ``keyspace.changes(E)``:
entry id ``<version>-0``, field :data:`MESSAGE` holding the encoded protocol
message (written once by ``write.lua``; its bytes reach clients unchanged)
and :data:`COMMITTED` the commit time in ms.  Above this module the stream
speaks in :class:`Change` and :class:`Identity`; every Redis error is
translated here into :class:`~flagwire_server.store.types.StoreUnavailable`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final, ParamSpec, TypeVar

import redis.asyncio as aioredis
import redis.exceptions

from flagwire_server.store.keyspace import Keyspace
from flagwire_server.store.types import StoreUnavailable, as_str

__all__ = ["ACTOR", "COMMITTED", "KEY", "MESSAGE", "Change", "ChangeLog", "Identity", "Record"]

#: Fields of a change-log entry (written by ``scripts/write.lua``).
MESSAGE: Final = "m"
COMMITTED: Final = "t"
KEY: Final = "k"
ACTOR: Final = "a"

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Change:
    """One change-log entry: the change that produced environment ``version``."""

    version: int
    message: bytes
    t_ms: int


@dataclass(frozen=True, slots=True)
class Record:
    """Who made change ``version``, of which document, and when (ms)."""

    version: int
    key: str
    actor: str
    committed_ms: int


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the store and one environment are now.

    ``store_epoch`` is None when the store lost its identity (Redis came back
    empty); ``env_epoch`` is None when the environment does not exist.
    """

    store_epoch: str | None
    env_epoch: str | None
    env_version: int


def _version_of(entry_id: Any) -> int:
    return int(as_str(entry_id).split("-", 1)[0])


def _unavailable(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except (redis.exceptions.RedisError, OSError) as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from None

    return wrapper


class ChangeLog:
    """Change-log reads over one Redis client (a reader blocks on a connection of its own).

    Args:
        redis: the client these reads use.
        keyspace: where the keys are.
    """

    def __init__(self, redis: aioredis.Redis, keyspace: Keyspace) -> None:
        self.redis = redis
        self.ks = keyspace

    @_unavailable
    async def read(
        self, env: str, after: int, *, count: int = 1000, block_ms: int = 1000
    ) -> list[Change]:
        """The changes after version ``after``, waiting up to ``block_ms`` for the first."""
        resp: Any = await self.redis.xread(
            {self.ks.changes(env): f"{after}-0"}, count=count, block=block_ms
        )
        out: list[Change] = []
        for _stream, entries in resp or ():
            for entry_id, fields in entries:
                message = fields.get(MESSAGE.encode(), fields.get(MESSAGE))
                t_ms = fields.get(COMMITTED.encode(), fields.get(COMMITTED, 0))
                out.append(
                    Change(
                        _version_of(entry_id),
                        bytes(message) if message is not None else b"",
                        int(as_str(t_ms)),
                    )
                )
        return out

    @_unavailable
    async def record(self, env: str, version: int) -> Record | None:
        """Change ``version`` of ``env`` as recorded (None: not, or no longer, in the log)."""
        entries: Any = await self.redis.xrange(self.ks.changes(env), f"{version}-0", f"{version}-0")
        if not entries:
            return None
        fields = {as_str(k): as_str(v) for k, v in entries[0][1].items() if as_str(k) != MESSAGE}
        return Record(
            version=version,
            key=fields.get(KEY, ""),
            actor=fields.get(ACTOR, ""),
            committed_ms=int(fields.get(COMMITTED, "0") or 0),
        )

    @_unavailable
    async def first_after(self, env: str, after: int) -> int | None:
        """The version of the oldest entry after ``after`` still in the log (None: none)."""
        first = await self.redis.xrange(self.ks.changes(env), min=f"({after}-0", max="+", count=1)
        return _version_of(first[0][0]) if first else None

    @_unavailable
    async def identity(self, env: str) -> Identity:
        """The store's epoch and ``env``'s epoch and version, read in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(self.ks.meta(env), ["epoch", "version"])
        pipe.hget(self.ks.store, "epoch")
        (epoch_raw, version_raw), store_raw = await pipe.execute()
        return Identity(
            store_epoch=as_str(store_raw) if store_raw is not None else None,
            env_epoch=as_str(epoch_raw) if epoch_raw is not None else None,
            env_version=int(as_str(version_raw or b"0")),
        )

    @_unavailable
    async def store_epoch(self) -> str | None:
        """The store's identity (None: Redis lost it, or it was never bootstrapped)."""
        raw = await self.redis.hget(self.ks.store, "epoch")
        return as_str(raw) if raw is not None else None

    async def aclose(self) -> None:
        await self.redis.aclose()
