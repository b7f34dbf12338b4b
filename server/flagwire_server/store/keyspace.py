"""Every Redis key the read path and process touch, built in one place.

The layout is documented in ``docs/storage.md`` and ``docs/design.md``; the
store (``store.py``) builds the same environment keys through ``Store.key``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Keyspace"]


@dataclass(frozen=True, slots=True)
class Keyspace:
    """Key names under one prefix ``P``."""

    prefix: str = "fw"

    def env(self, env: str, suffix: str) -> str:
        """``P:{env}:suffix`` — hash-tagged so one environment lives in one cluster slot."""
        return f"{self.prefix}:{{{env}}}:{suffix}"

    def meta(self, env: str) -> str:
        return self.env(env, "meta")

    def changes(self, env: str) -> str:
        return self.env(env, "changes")

    def acks(self, env: str, version: int) -> str:
        return self.env(env, f"acks:{version}")

    @property
    def envs(self) -> str:
        return f"{self.prefix}:envs"

    @property
    def store(self) -> str:
        """HASH ``epoch``, ``created_at``: the store's identity, set once on first start."""
        return f"{self.prefix}:store"

    @property
    def instances(self) -> str:
        return f"{self.prefix}:instances"

    @property
    def bootstrap_lock(self) -> str:
        return f"{self.prefix}:bootstrap:lock"

    @property
    def keys_version(self) -> str:
        return f"{self.prefix}:{{keys}}:version"
