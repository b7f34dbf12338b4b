"""Finished scheduled changes and ended release plans are kept N days, then deleted.

Why: both are kept after they end (what ran, when, how fast the clients
followed, why a plan rolled back), and without a limit an environment that
schedules a change an hour would grow its ``schedule`` hash by 8,760 records a
year.  A record's end is its ``finished_ms`` (executed, skipped, failed,
missed), its cancellation, or a plan's last event; pending changes and active
plans are never deleted, whatever their age.

:func:`expired_changes` and :func:`expired_plans` are pure; :class:`Retention`
runs them over every environment at most every ``interval`` seconds, from the
release-plan loop of every server (deleting is idempotent, so two servers
trimming at once only repeat each other).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any, Final

from flagwire_server.store.plans import PlanStore
from flagwire_server.store.schedule import ScheduleStore

__all__ = ["Retention", "ended_ms", "expired_changes", "expired_plans"]

log = logging.getLogger("flagwire.releases")

DAY_MS: Final = 86_400_000
_CHANGE_FINAL: Final = frozenset({"applied", "skipped", "failed", "missed", "cancelled"})
_PLAN_ENDED: Final = frozenset({"completed", "rolled_back", "abandoned"})


def _iso_ms(value: object) -> int | None:
    if not isinstance(value, str):
        return None
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None


def ended_ms(record: dict[str, Any]) -> int | None:
    """When a finished change or an ended plan ended (None: it has not, or no time is known)."""
    if record.get("status") in _CHANGE_FINAL and "due_ms" in record:
        for ms in (record.get("finished_ms"), _iso_ms(record.get("cancelled_at"))):
            if isinstance(ms, int):
                return ms
        return int(record["due_ms"])
    if record.get("status") in _PLAN_ENDED:
        events = record.get("events") or []
        if events and isinstance(events[-1].get("at_ms"), int):
            return int(events[-1]["at_ms"])
        return _iso_ms(record.get("created_at"))
    return None


def _expired(records: Iterable[dict[str, Any]], now_ms: int, keep_days: float) -> list[str]:
    limit = now_ms - keep_days * DAY_MS
    out = []
    for r in records:
        end = ended_ms(r)
        if end is not None and end < limit:
            out.append(str(r["id"]))
    return out


def expired_changes(records: Iterable[dict[str, Any]], now_ms: int, keep_days: float) -> list[str]:
    """Ids of changes that finished more than ``keep_days`` before ``now_ms``."""
    return _expired((r for r in records if "due_ms" in r), now_ms, keep_days)


def expired_plans(plans: Iterable[dict[str, Any]], now_ms: int, keep_days: float) -> list[str]:
    """Ids of plans that ended more than ``keep_days`` before ``now_ms``."""
    return _expired((p for p in plans if "stages" in p), now_ms, keep_days)


class Retention:
    """Deletes what :func:`expired_changes` and :func:`expired_plans` name, everywhere.

    Args:
        schedules, plans: the stores.
        envs: the environments' keys.
        keep_days: days a finished record is kept (``FLAGWIRE_RELEASE_RETENTION_DAYS``).
        interval: seconds between two trims by this server.
        clock: seconds since the epoch.
    """

    def __init__(
        self,
        schedules: ScheduleStore,
        plans: PlanStore,
        envs: Callable[[], Awaitable[list[str]]],
        *,
        keep_days: float,
        interval: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.schedules = schedules
        self.plans = plans
        self.envs = envs
        self.keep_days = keep_days
        self.interval = interval
        self.clock = clock
        self._last = float("-inf")

    async def maybe_trim(self) -> None:
        """Trim if ``interval`` passed since this server last did."""
        if self.clock() - self._last >= self.interval:
            self._last = self.clock()
            await self.trim()

    async def trim(self) -> dict[str, int]:
        """Delete expired records of every environment; how many of each kind."""
        now = int(self.clock() * 1000)
        changes = plans = 0
        for env in await self.envs():
            old = expired_changes(await self.schedules.list_changes(env), now, self.keep_days)
            if old:
                changes += await self.schedules.delete(env, old)
            ended = expired_plans(await self.plans.list_plans(env), now, self.keep_days)
            if ended:
                plans += await self.plans.delete(env, ended)
        if changes or plans:
            log.info("retention: deleted %d scheduled changes and %d release plans", changes, plans)
        return {"changes": changes, "plans": plans}
