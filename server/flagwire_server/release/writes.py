"""How a release plan changes its flag: stage writes, completion, roll back, and the events.

Every write goes through the store's normal write path (versioned, audited,
sent to clients) at the version the plan wrote last, so a flag edited outside
the plan is not overwritten: the plan pauses and says why.  Roll back writes
the flag exactly as it was before the plan, whatever happened since, in one
write.  Each write is then confirmed by the clients' acknowledgements and
recorded as an event: what, when, by whom, the flag version and the
propagation ("applied by N of M in X ms").

The caller (``release/runner.py``) holds the plan's lock and saves the plan.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from flagwire_server.release.plan import flag_at_stage, flag_completed
from flagwire_server.release.schedule import iso_ms
from flagwire_server.store.documents import Conflict, Store, WriteResult
from flagwire_server.store.types import _body

__all__ = ["PlanWriter", "WaitFor"]

WaitFor = Callable[[str, int, float], Awaitable[dict[str, Any]]]
#: Called with ``(env, flag)`` when a stage with guards of its own starts; returns its baseline.
Baseline = Callable[[str, str], Awaitable[dict[str, Any]]]


class PlanWriter:
    """Writes a plan's flag and records what happened.

    Args:
        store: the flag store.
        wait_for: the fan-out's ``(env, env_version, seconds) -> propagation``.
        clock: seconds since the epoch.
        on_event: ``(env, what)`` for each event (metrics).
        on_plan_event: ``(plan, event)`` for each event (the webhooks' ``plan.*``).
        baseline: reads the counts a stage's client-event guards start from.
    """

    def __init__(
        self,
        store: Store,
        *,
        wait_for: WaitFor | None,
        clock: Callable[[], float] = time.time,
        on_event: Callable[[str, str], None] | None = None,
        baseline: Baseline | None = None,
        on_plan_event: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
    ) -> None:
        self.store = store
        self.wait_for = wait_for
        self.clock = clock
        self.on_event = on_event
        self.baseline = baseline
        self.on_plan_event = on_plan_event

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def next(
        self, env: str, plan: dict[str, Any], *, actor: str, what: str
    ) -> dict[str, Any]:
        """The next stage (or completion), or the plan paused if the flag was edited outside it."""
        if plan["status"] != "running":
            raise Conflict(f"release plan {plan['id']!r} is {plan['status']}", 0)
        nxt = int(plan["stage"]) + 1
        try:
            if nxt >= len(plan["stages"]):
                doc = flag_completed(plan["before"], plan)
                res = await self._write(env, plan, doc, actor=actor)
                plan = {**plan, "status": "completed", "flag_version": res.version}
                return await self.confirmed(env, plan, res, "completed", actor=actor)
            return await self.stage(env, plan, nxt, what=what, actor=actor)
        except Conflict as exc:
            reason = (
                f"the flag was edited outside the plan ({exc}); resume to continue, or roll back"
            )
            paused = {**plan, "status": "paused", "reason": reason, "paused_ms": self.now_ms()}
            return self.event(paused, "paused", actor=actor)

    async def stage(
        self, env: str, plan: dict[str, Any], stage: int, *, what: str, actor: str
    ) -> dict[str, Any]:
        base: dict[str, Any] = {}
        if self.baseline is not None and plan["stages"][stage].get("guards"):
            # Before the write: what the stage's guards count is what follows it.
            base = await self.baseline(env, plan["flag"])
        doc = flag_at_stage(plan["before"], plan, stage)
        res = await self._write(env, plan, doc, actor=actor)
        plan = {
            **plan,
            "stage": stage,
            "stage_started_ms": self.now_ms(),
            "stage_base": base,
            "approved": False,
            "flag_version": res.version,
        }
        return await self.confirmed(env, plan, res, what, actor=actor)

    async def rollback(
        self,
        env: str,
        plan: dict[str, Any],
        *,
        actor: str,
        reason: str,
        detected_ms: int | None = None,
    ) -> dict[str, Any]:
        """The flag as it was before the plan, in one write; the plan ends ``rolled_back``."""
        detected = self.now_ms() if detected_ms is None else detected_ms
        current = await self.store.get_doc(env, "flag", plan["flag"])
        res = await self.store.put(
            env,
            "flag",
            _body(plan["before"], plan["flag"]),
            actor=f"{actor} (release plan {plan['id']})",
            expected=current["version"],
            key=plan["flag"],
        )
        plan = {**plan, "status": "rolled_back", "reason": reason, "flag_version": res.version}
        written = self.now_ms()
        plan = await self.confirmed(env, plan, res, "rolled back", actor=actor)
        event = plan["events"][-1]
        event.update(
            detected_ms=detected,
            detected_at=iso_ms(detected),
            written_ms=written,
            reason=reason,
        )
        prop = event.get("propagation")
        if prop is not None and prop.get("max_ms") is not None:
            # Detection to the last acknowledgement: the figure a guard promises.
            event["detection_to_applied_ms"] = round(written - detected + float(prop["max_ms"]), 1)
        return plan

    async def _write(
        self, env: str, plan: dict[str, Any], doc: dict[str, Any], *, actor: str
    ) -> WriteResult:
        return await self.store.put(
            env,
            "flag",
            _body(doc, plan["flag"]),
            actor=f"{actor} (release plan {plan['id']})",
            expected=int(plan["flag_version"]),
            key=plan["flag"],
        )

    async def confirmed(
        self, env: str, plan: dict[str, Any], res: WriteResult, what: str, *, actor: str
    ) -> dict[str, Any]:
        extra: dict[str, Any] = {"flag_version": res.version, "env_version": res.env_version}
        if self.wait_for is not None and res.changed:
            with contextlib.suppress(Exception):
                prop = await self.wait_for(env, res.env_version, float(plan.get("wait", 5.0)))
                extra["propagation"] = prop
                extra["summary"] = (
                    f"applied by {prop.get('acknowledged')} of {prop.get('connected')} "
                    f"in {prop.get('max_ms')} ms"
                )
        return self.event(plan, what, actor=actor, **extra)

    def event(self, plan: dict[str, Any], what: str, *, actor: str, **extra: Any) -> dict[str, Any]:
        now = self.now_ms()
        if self.on_event is not None:
            self.on_event(str(plan.get("env", "")), what)
        event = {"at": iso_ms(now), "at_ms": now, "what": what, "by": actor, "stage": plan["stage"]}
        event.update(extra)
        if self.on_plan_event is not None:
            self.on_plan_event(plan, event)
        return {**plan, "events": [*plan.get("events", []), event][-200:]}
