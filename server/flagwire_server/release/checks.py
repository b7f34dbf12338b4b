"""Release-plan guards, the I/O part: read each guard's data, judge it, keep the reading.

The runner (``release/runner.py``) asks :meth:`GuardChecks.breached` on every
tick for each running plan; this module reads Prometheus or the fleet-insight
counts, judges them with the pure functions of ``release/guards.py`` and
``release/prometheus.py``, and keeps a reading per guard for the console's
chart: one per plan every :data:`READING_EVERY` seconds on the whole fleet
(the first server to check in each period keeps it), and every breach.  It
never writes the flag: a breach is returned, and the runner rolls back or
pauses under the plan's lock.

A guard's data that cannot be read (Prometheus down, Redis slow) is logged and
counted as ``error``, not as a breach: an outage of the monitoring must not
roll back every release.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Final

import httpx

from flagwire_server.release.guards import Reading, Tally, event_reading, tally
from flagwire_server.release.prometheus import PrometheusError, breach, query
from flagwire_server.store.insight import DAY_MS, InsightStore
from flagwire_server.store.plans import PlanStore
from flagwire_server.store.types import StoreError

__all__ = ["GuardChecks", "active_guards", "has_event_guards"]

log = logging.getLogger("flagwire.releases")

#: Seconds between two readings of one plan kept, fleet-wide (with ``MAX_READINGS`` of
#: ``store/plans.py``: the last 4 hours and 10 minutes of a plan's guards).
READING_EVERY: Final = 5.0


def active_guards(plan: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """The guards checked now: the plan's (baseline ``base``) and the current stage's
    (baseline ``stage_base``)."""
    stage = plan["stages"][int(plan["stage"])]
    return [(g, "base") for g in plan.get("guards") or []] + [
        (g, "stage_base") for g in stage.get("guards") or []
    ]


def has_event_guards(guards: list[dict[str, Any]]) -> bool:
    return any(g.get("kind") == "event" for g in guards)


def _tallies(counts: dict[str, dict[str, Any]], event: str) -> dict[int, Tally]:
    return {
        int(v): Tally(
            int(c.get("n", 0)),
            int((c.get("e") or {}).get(event, 0)),
            float((c.get("s") or {}).get(event, 0.0)),
            float((c.get("q") or {}).get(event, 0.0)),
        )
        for v, c in counts.items()
    }


class GuardChecks:
    """Reads and judges the guards of running plans.

    Args:
        plans: where readings are kept.
        insight: the fleet-insight aggregates (client-event guards).
        prometheus_url: the Prometheus that query guards ask (None: none configured).
        on_guard: ``(env, outcome)`` per check, outcome ``ok``/``breach``/``error``/``waiting``.
        clock: seconds since the epoch.
    """

    def __init__(
        self,
        plans: PlanStore,
        insight: InsightStore | None,
        *,
        prometheus_url: str | None,
        on_guard: Callable[[str, str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.plans = plans
        self.insight = insight
        self.prometheus_url = prometheus_url
        self.on_guard = on_guard
        self.clock = clock
        self._http = httpx.AsyncClient(timeout=2.0)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def baseline(self, env: str, flag: str) -> dict[str, Any]:
        """The flag's event and evaluation totals now, to subtract from later reads."""
        if self.insight is None:
            return {}
        day = int(self.clock() * 1000) // DAY_MS
        return {"day": day, "v": await self.insight.counts_since(env, flag, day)}

    async def watch(self, env: str, flag: str) -> bool:
        """Make the clients attribute ``track`` events to ``flag``; True if newly watched."""
        return self.insight is not None and await self.insight.watch(env, flag)

    async def unwatch(self, env: str, flag: str) -> None:
        if self.insight is not None:
            await self.insight.unwatch(env, flag)

    def _count(self, env: str, outcome: str) -> None:
        if self.on_guard is not None:
            self.on_guard(env, outcome)

    async def breached(self, env: str, plan: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
        """The first active guard of ``plan`` that breaches, with why; None if none does."""
        guards = active_guards(plan)
        if not guards:
            return None
        now = self.clock()
        # One server of the fleet keeps the reading of each period (the others only judge).
        try:
            keep = await self.plans.reading_due(env, plan["id"], int(READING_EVERY * 1000))
        except StoreError:
            keep = False
        counts: dict[int, dict[str, dict[str, Any]]] = {}  # by the baseline's day
        for guard, base_key in guards:
            entry: dict[str, Any] = {
                "at_ms": int(now * 1000),
                "guard": guard["name"],
                "stage": plan["stage"],
            }
            why: str | None = None
            try:
                if guard.get("kind", "prometheus") == "event":
                    base = plan.get(base_key) or {}
                    day = int(base.get("day", int(now * 1000) // DAY_MS))
                    if day not in counts:
                        counts[day] = await self._counts(env, plan["flag"], day)
                    reading = self._event(guard, counts[day], base, plan)
                    entry.update(reading.as_json())
                    why = reading.breach
                    outcome = "waiting" if reading.stat is None else "ok"
                else:
                    if self.prometheus_url is None:
                        continue
                    value = await query(self._http, self.prometheus_url, guard["query"])
                    entry["value"] = value
                    why = breach(guard, value)
                    outcome = "ok"
            except (PrometheusError, StoreError) as exc:
                self._count(env, "error")
                log.warning(
                    "releases: guard %s of %s not checked: %s", guard["name"], plan["id"], exc
                )
                continue
            self._count(env, "breach" if why else outcome)
            if keep or why:
                entry["breach"] = why
                try:
                    await self.plans.add_reading(env, plan["id"], entry)
                except StoreError as exc:
                    log.warning("releases: reading of %s not kept: %s", plan["id"], exc)
            if why:
                return guard, why
        return None

    async def _counts(self, env: str, flag: str, day: int) -> dict[str, dict[str, Any]]:
        if self.insight is None:
            return {}
        return await self.insight.counts_since(env, flag, day)

    @staticmethod
    def _event(
        guard: dict[str, Any],
        counts: dict[str, dict[str, Any]],
        base: dict[str, Any],
        plan: dict[str, Any],
    ) -> Reading:
        now, then = _tallies(counts, guard["event"]), _tallies(base.get("v") or {}, guard["event"])
        new = tally(now, then, int(plan["variation"]))
        old = tally(now, then, int(plan["old_variation"]))
        return event_reading(guard, new, old)
