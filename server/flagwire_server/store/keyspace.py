"""Every Redis key flagwire uses, built in one place.

Why one place: an environment name is user input, and in v1 an environment
named ``keys`` owned the pattern ``P:{keys}:*`` that also covered the API key
ring, so deleting it wiped every key.  The layout now keeps the two apart by
construction:

* environment data is ``P:{ENV}:suffix`` — after the prefix, always ``{``;
* internal data is ``P:NAME…`` where NAME starts with a lowercase letter —
  never ``{`` — (``P:envs``, ``P:store``, ``P:sys:{keys}:records``, …).

So no environment key can equal an internal key, and the glob an environment
deletes (``P:{ENV}:*``, with ``P`` escaped) matches only its own keys: ENV
cannot contain ``{``, ``}``, ``:`` or a glob character (``ENV_RE``).  The
property test in ``tests/test_keyspace.py`` checks both over accepted names
and every family listed in :meth:`Keyspace.internal_families`.

The layout is documented in ``docs/storage.md``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["Keyspace", "glob_escape"]

_GLOB = re.compile(r"([\\*?\[\]])")


def glob_escape(text: str) -> str:
    """``text`` as a literal inside a Redis ``MATCH`` pattern."""
    return _GLOB.sub(r"\\\1", text)


@dataclass(frozen=True, slots=True)
class Keyspace:
    """Key names under one prefix ``P``."""

    prefix: str = "fw"

    # --- one environment: P:{env}:... ---------------------------------------

    def env(self, env: str, suffix: str) -> str:
        """``P:{env}:suffix`` — hash-tagged so one environment lives in one cluster slot."""
        return f"{self.prefix}:{{{env}}}:{suffix}"

    def env_pattern(self, env: str) -> str:
        """A ``SCAN MATCH`` pattern for every key of ``env`` and nothing else."""
        return f"{glob_escape(self.prefix)}:{{{env}}}:*"

    def meta(self, env: str) -> str:
        return self.env(env, "meta")

    def docs(self, env: str, kind: Literal["flag", "segment"]) -> str:
        return self.env(env, "flags" if kind == "flag" else "segments")

    def history(self, env: str, kind: Literal["flag", "segment"], key: str) -> str:
        return self.env(env, f"history:{key}" if kind == "flag" else f"seghistory:{key}")

    def changes(self, env: str) -> str:
        return self.env(env, "changes")

    def audit(self, env: str) -> str:
        return self.env(env, "audit")

    def acks(self, env: str, version: int) -> str:
        return self.env(env, f"acks:{version}")

    def conns(self, env: str) -> str:
        return self.env(env, "conns")

    def floors(self, env: str) -> str:
        return self.env(env, "floors")

    def schedule(self, env: str) -> str:
        """HASH id -> scheduled change (JSON), pending and finished alike."""
        return self.env(env, "schedule")

    def schedule_due(self, env: str) -> str:
        """ZSET id -> due time in ms, of the changes not yet executed."""
        return self.env(env, "schedule:due")

    def schedule_lease(self, env: str) -> str:
        """HASH id -> ``owner lease_until_ms`` of the changes a server is executing."""
        return self.env(env, "schedule:lease")

    def archive(self, env: str) -> str:
        """HASH flag key -> JSON of an archived flag (``store/archive.py``)."""
        return self.env(env, "archive")

    def insight(self, env: str, suffix: str) -> str:
        """Fleet-insight aggregates and inventory (``store/insight.py`` names the suffixes)."""
        return self.env(env, f"ins:{suffix}")

    def plans(self, env: str) -> str:
        """HASH plan id -> release plan (JSON), active and ended."""
        return self.env(env, "plans")

    def plans_active(self, env: str) -> str:
        """HASH flag key -> id of its one active release plan."""
        return self.env(env, "plans:active")

    def plan_lock(self, env: str, plan_id: str) -> str:
        """STRING owner, with a TTL: the server acting on a plan right now."""
        return self.env(env, f"plans:lock:{plan_id}")

    def plan_readings(self, env: str, plan_id: str) -> str:
        """LIST of a plan's guard readings (JSON), oldest first, capped (the console's chart)."""
        return self.env(env, f"plans:readings:{plan_id}")

    def plan_reading_tick(self, env: str, plan_id: str) -> str:
        """STRING with a TTL: a guard reading of the plan was kept in this period."""
        return self.env(env, f"plans:readtick:{plan_id}")

    def plan_templates(self, env: str) -> str:
        """HASH name -> stages (JSON) of the environment's own release templates."""
        return self.env(env, "plans:templates")

    def webhooks(self, env: str) -> str:
        """HASH webhook id -> webhook (JSON, with its signing secret; ``store/webhooks.py``)."""
        return self.env(env, "webhooks")

    def webhook_events(self, env: str) -> str:
        """STREAM of schedule and plan events waiting to be delivered to webhooks."""
        return self.env(env, "webhooks:events")

    def webhook_log(self, env: str, webhook_id: str) -> str:
        """LIST of a webhook's last delivery attempts (JSON), newest first."""
        return self.env(env, f"webhooks:log:{webhook_id}")

    # --- instance-wide: P:<lowercase letter>... ------------------------------

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

    def keyring(self, suffix: Literal["records", "byhash", "version"]) -> str:
        """The API key ring; one hash tag so its transactions work on a cluster."""
        return f"{self.prefix}:sys:{{keys}}:{suffix}"

    @property
    def keys_version(self) -> str:
        return self.keyring("version")

    def session(self, sid_hash: str) -> str:
        """A console session, named by the SHA-256 of its id (never the id itself)."""
        return f"{self.prefix}:sys:session:{sid_hash}"

    @property
    def sessions_version(self) -> str:
        """Bumped on every sign-out, so instances close that session's streams."""
        return f"{self.prefix}:sys:sessions:version"

    @property
    def audit_log(self) -> str:
        """STREAM of instance-wide audit entries (environments, keys, sign-ins)."""
        return f"{self.prefix}:sys:audit"

    @property
    def admin_key_check(self) -> str:
        """HASH ``salt``, ``digest``: a slow hash of ``FLAGWIRE_ADMIN_KEY`` to notice rotation."""
        return f"{self.prefix}:sys:adminkey"

    @property
    def webhook_envs(self) -> str:
        """SET of the environments that have (or recently had) webhooks."""
        return f"{self.prefix}:sys:webhooks:envs"

    # --- v1 names, read only to migrate them ----------------------------------

    def legacy_keyring(self, suffix: Literal["records", "byhash", "version"]) -> str:
        """v1's key ring, ``P:{keys}:suffix`` (inside an environment's key space)."""
        return f"{self.prefix}:{{keys}}:{suffix}"

    def legacy_console(self) -> list[str]:
        """v1's console secret; its plain sessions ``P:sessions:*`` are matched by pattern."""
        return [f"{self.prefix}:console:secret"]

    @property
    def legacy_sessions_pattern(self) -> str:
        return f"{glob_escape(self.prefix)}:sessions:*"

    # --- for the property test -------------------------------------------------

    def internal_families(self, sample: str) -> list[str]:
        """One key of every instance-wide family (``sample`` fills the variable parts)."""
        return [
            self.envs,
            self.store,
            self.instances,
            self.bootstrap_lock,
            self.keyring("records"),
            self.keyring("byhash"),
            self.keyring("version"),
            self.session(sample),
            self.sessions_version,
            self.audit_log,
            self.admin_key_check,
            self.webhook_envs,
        ]

    def env_families(self, env: str, sample: str) -> list[str]:
        """One key of every per-environment family."""
        return [
            self.meta(env),
            self.docs(env, "flag"),
            self.docs(env, "segment"),
            self.history(env, "flag", sample),
            self.history(env, "segment", sample),
            self.changes(env),
            self.audit(env),
            self.acks(env, 1),
            self.conns(env),
            self.floors(env),
            self.schedule(env),
            self.schedule_due(env),
            self.schedule_lease(env),
            self.insight(env, f"h:{sample}:20000"),
            self.insight(env, "clients"),
            self.archive(env),
            self.plans(env),
            self.plans_active(env),
            self.plan_lock(env, sample),
            self.plan_readings(env, sample),
            self.plan_reading_tick(env, sample),
            self.plan_templates(env),
            self.webhooks(env),
            self.webhook_events(env),
            self.webhook_log(env, sample),
        ]
