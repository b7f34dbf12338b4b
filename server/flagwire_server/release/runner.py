"""Release plans, the I/O part: operations and the loop that advances plans when holds end.

Every server runs the loop; people's operations (start, pause, resume, advance,
approve, roll back, abandon) come through the API of any server.  Each acts
under the plan's lock (``store/plans.py``), re-reads the plan, writes the flag
(``release/writes.py``: versioned, audited, confirmed by the clients) and
saves the plan with an event.  On each tick the loop also asks the running
plans' guards (``release/checks.py``) and on a breach rolls back or pauses at
once.  A plan with client-event guards keeps its flag watched (the clients
attribute ``track`` events to it) from its start to its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

from flagwire.core.errors import ValidationError
from flagwire_server.background import stop_requested
from flagwire_server.release.checks import GuardChecks, active_guards, has_event_guards
from flagwire_server.release.guards import parse_guards
from flagwire_server.release.plan import TEMPLATES, old_variation, parse_stages
from flagwire_server.release.retention import Retention
from flagwire_server.release.schedule import iso_ms
from flagwire_server.release.writes import PlanWriter, WaitFor
from flagwire_server.store.documents import Conflict, NotFound, Store, StoreError
from flagwire_server.store.insight import InsightStore
from flagwire_server.store.plans import PlanStore

__all__ = ["OPERATIONS", "PlanBusy", "Releases"]

log = logging.getLogger("flagwire.releases")

OPERATIONS: Final = ("pause", "resume", "advance", "approve", "rollback", "abandon")
_LOCK_MS: Final = 30_000
_ENDED: Final = ("completed", "rolled_back", "abandoned")


class PlanBusy(StoreError):
    """Another server is acting on this plan right now (try again in a moment)."""


class Releases:
    """Start and operate release plans; :meth:`start_loop` advances them on time.

    Args:
        store: the flag store.
        plans: plans, active index, locks and templates in Redis.
        owner: this process's instance id.
        wait_for: the fan-out's ``(env, env_version, seconds) -> propagation``.
        clock: seconds since the epoch (tests pass their own).
        interval: seconds between two looks at the active plans.
        prometheus_url: the Prometheus that query guards ask.
        insight: the fleet-insight aggregates that client-event guards read.
        on_event, on_guard: metrics callbacks ``(env, what)``.
        on_plan_event: ``(plan, event)`` for each plan event (webhooks).
        retention: trims finished changes and ended plans from this loop.
    """

    def __init__(
        self,
        store: Store,
        plans: PlanStore,
        *,
        owner: str,
        wait_for: WaitFor | None = None,
        clock: Callable[[], float] = time.time,
        interval: float = 0.25,
        prometheus_url: str | None = None,
        insight: InsightStore | None = None,
        on_event: Callable[[str, str], None] | None = None,
        on_guard: Callable[[str, str], None] | None = None,
        retention: Retention | None = None,
        on_plan_event: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
    ) -> None:
        self.store = store
        self.plans = plans
        self.owner = owner
        self.clock = clock
        self.interval = interval
        self.prometheus_url = prometheus_url
        self.checks = GuardChecks(
            plans, insight, prometheus_url=prometheus_url, on_guard=on_guard, clock=clock
        )
        self.writer = PlanWriter(
            store,
            wait_for=wait_for,
            clock=clock,
            on_event=on_event,
            baseline=self.checks.baseline,
            on_plan_event=on_plan_event,
        )
        self.retention = retention
        self._task: asyncio.Task[None] | None = None

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # --- start -----------------------------------------------------------------

    async def template(self, env: str, name: str) -> list[dict[str, Any]]:
        own = await self.plans.templates(env)
        stages = own.get(name, TEMPLATES.get(name))
        if stages is None:
            known = sorted({*TEMPLATES, *own})
            raise ValidationError([("template", f"no template {name!r}; known: {known}")])
        return stages

    async def start(self, env: str, body: object, *, actor: str) -> dict[str, Any]:
        """Start a plan: checks, then the first stage written at once.

        Raises:
            ValidationError: bad stages, variation or flag state (422).
            NotFound: no such flag or segment (404).
            Conflict: the flag has an active plan (409).
        """
        if not isinstance(body, dict):
            raise ValidationError([("", "expected a JSON object")])
        flag = body.get("flag")
        if not isinstance(flag, str):
            raise ValidationError([("flag", "required: the flag to release")])
        if "template" in body and "stages" in body:
            raise ValidationError([("stages", "give stages or a template, not both")])
        raw = (
            await self.template(env, str(body["template"]))
            if "template" in body
            else body.get("stages")
        )
        stages = parse_stages(raw)
        active = await self.plans.active_for(env, flag)
        if active is not None:
            raise Conflict(f"flag {flag!r} already has an active plan ({active})", 0)
        before = await self.store.get_doc(env, "flag", flag)
        old = old_variation(before)
        new = body.get("variation")
        count = len(before.get("variations") or [])
        if new is None and count == 2:
            new = 1 - old  # an on/off flag: the new variation is the one not served now
        elif new is None:
            raise ValidationError(
                [("variation", f"required: the flag has {count} variations and serves {old} now")]
            )
        if type(new) is not int or not 0 <= new < count or new == old:
            raise ValidationError(
                [("variation", f"the new variation: an index below {count}, not the old {old}")]
            )
        for seg in {s for st in stages for s in st["segments"]}:
            try:
                await self.store.get_doc(env, "segment", seg)
            except NotFound:
                raise ValidationError([("stages", f"segment {seg!r} does not exist")]) from None
        guards = parse_guards(body.get("guards"))
        every = guards + [g for st in stages for g in st["guards"]]
        if not self.prometheus_url and any(g["kind"] == "prometheus" for g in every):
            raise ValidationError(
                [("guards", "no Prometheus configured (FLAGWIRE_PROMETHEUS_URL)")]
            )
        wait = body.get("wait", 5.0)
        if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 <= wait <= 30:
            raise ValidationError([("wait", "expected seconds from 0 to 30")])
        now = self.now_ms()
        plan: dict[str, Any] = {
            "id": self.plans.new_id(),
            "env": env,
            "flag": flag,
            "variation": new,
            "old_variation": old,
            "stages": stages,
            "guards": guards,
            "template": body.get("template"),
            "wait": float(wait),
            "status": "running",
            "stage": 0,
            "stage_started_ms": now,
            "approved": False,
            "before": before,
            "flag_version": before["version"],
            "created_by": actor,
            "created_at": iso_ms(now),
            "events": [],
        }
        await self.plans.create(env, plan)
        try:
            if has_event_guards(every):
                plan["watch_added"] = await self.checks.watch(env, flag)
                if guards:
                    plan["base"] = await self.checks.baseline(env, flag)
            plan = await self.writer.stage(env, plan, 0, what="started", actor=actor)
        except Exception:
            plan = {**plan, "status": "abandoned", "reason": "the first stage could not be written"}
            await self._save(env, plan)
            raise
        await self._save(env, plan)
        return plan

    # --- operations ---------------------------------------------------------------

    async def operate(self, env: str, plan_id: str, op: str, *, actor: str) -> dict[str, Any]:
        """One of :data:`OPERATIONS` by a person.

        Raises:
            NotFound, Conflict (the plan ended or the operation does not apply), PlanBusy.
        """
        async with self._locked(env, plan_id):
            plan = await self.plans.get(env, plan_id)
            if plan["status"] in _ENDED:
                raise Conflict(f"release plan {plan_id!r} has ended ({plan['status']})", 0)
            now = self.now_ms()
            if op == "pause":
                if plan["status"] != "running":
                    raise Conflict(f"release plan {plan_id!r} is not running", 0)
                plan = self.writer.event(
                    {**plan, "status": "paused", "paused_ms": now}, "paused", actor=actor
                )
            elif op == "resume":
                if plan["status"] != "paused":
                    raise Conflict(f"release plan {plan_id!r} is not paused", 0)
                # The hold continues where it stopped; nobody's variation changes.
                held = int(plan.get("paused_ms", now)) - int(plan["stage_started_ms"])
                current = await self.store.get_doc(env, "flag", plan["flag"])
                plan = {
                    **plan,
                    "status": "running",
                    "stage_started_ms": now - max(0, held),
                    "flag_version": current["version"],
                    "reason": "",
                }
                # Event guards count again from here: resuming after a guard paused the
                # plan accepts what it saw; only new evidence pauses it again.
                if has_event_guards(plan.get("guards") or []):
                    plan["base"] = await self.checks.baseline(env, plan["flag"])
                if has_event_guards(plan["stages"][int(plan["stage"])].get("guards") or []):
                    plan["stage_base"] = await self.checks.baseline(env, plan["flag"])
                plan = self.writer.event(plan, "resumed", actor=actor)
            elif op == "approve":
                plan = self.writer.event({**plan, "approved": True}, "approved", actor=actor)
            elif op == "advance":
                plan = await self.writer.next(env, plan, actor=actor, what="advanced")
            elif op == "rollback":
                plan = await self.writer.rollback(
                    env, plan, actor=actor, reason="rolled back by hand"
                )
            elif op == "abandon":
                plan = self.writer.event({**plan, "status": "abandoned"}, "abandoned", actor=actor)
            else:
                raise ValidationError([("operation", f"expected one of {', '.join(OPERATIONS)}")])
            await self._save(env, plan)
            return plan

    async def _save(self, env: str, plan: dict[str, Any]) -> None:
        """Save the plan; an ended one frees its flag and stops watching it if it started to."""
        ended = plan["status"] in _ENDED
        await self.plans.save(env, plan, ended=ended)
        if ended and plan.get("watch_added"):
            with contextlib.suppress(StoreError):
                await self.checks.unwatch(env, plan["flag"])

    # --- the loop -----------------------------------------------------------------

    def start_loop(self) -> None:
        self._task = asyncio.create_task(self._run(), name="flagwire-releases")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.checks.aclose()

    async def _run(self) -> None:
        while not stop_requested():
            try:
                await self.tick()
                if self.retention is not None:
                    await self.retention.maybe_trim()
            except StoreError as exc:
                log.warning("releases: store unavailable (%s); trying again", exc)
            except Exception:
                log.exception("releases: tick failed")
            await asyncio.sleep(self.interval)

    async def tick(self) -> list[dict[str, Any]]:
        """Advance every running plan whose hold has ended (and that is approved if it must be)."""
        moved: list[dict[str, Any]] = []
        for env in [str(e["key"]) for e in await self.store.list_envs()]:
            for plan_id in await self.plans.active_ids(env):
                with contextlib.suppress(NotFound):
                    plan = await self.plans.get(env, plan_id)
                    if plan.get("status") == "running" and active_guards(plan):
                        with contextlib.suppress(PlanBusy):
                            stopped = await self._check_guards(env, plan)
                            if stopped is not None:
                                moved.append(stopped)
                                continue
                    if self._due(plan):
                        with contextlib.suppress(PlanBusy):
                            advanced = await self._advance_if_due(env, plan_id)
                            if advanced is not None:
                                moved.append(advanced)
        return moved

    async def _check_guards(self, env: str, plan: dict[str, Any]) -> dict[str, Any] | None:
        """Ask the active guards; on a breach roll back (or pause) at once, under the lock."""
        found = await self.checks.breached(env, plan)
        if found is None:
            return None
        guard, why = found
        detected = self.now_ms()
        async with self._locked(env, plan["id"]):
            plan = await self.plans.get(env, plan["id"])
            if plan.get("status") != "running":
                return None
            reason = f"guard breached: {why}"
            if guard["action"] == "pause":
                plan = self.writer.event(
                    {**plan, "status": "paused", "reason": reason, "paused_ms": detected},
                    "paused by a guard",
                    actor="guard",
                    detected_ms=detected,
                    detected_at=iso_ms(detected),
                    reason=reason,
                )
            else:
                plan = await self.writer.rollback(
                    env, plan, actor="guard", reason=reason, detected_ms=detected
                )
            await self._save(env, plan)
            log.warning("release plan %s stopped: %s", plan["id"], reason)
            return plan

    def _due(self, plan: dict[str, Any]) -> bool:
        if plan.get("status") != "running":
            return False
        stage = plan["stages"][plan["stage"]]
        if stage["approval"] and not plan.get("approved"):
            return False
        return self.now_ms() >= int(plan["stage_started_ms"]) + int(stage["hold"] * 1000)

    async def _advance_if_due(self, env: str, plan_id: str) -> dict[str, Any] | None:
        async with self._locked(env, plan_id):
            plan = await self.plans.get(env, plan_id)
            if not self._due(plan):
                return None  # another server advanced it first
            plan = await self.writer.next(
                env, plan, actor="release plan", what="advanced on schedule"
            )
            await self._save(env, plan)
            return plan

    @contextlib.asynccontextmanager
    async def _locked(self, env: str, plan_id: str) -> AsyncIterator[None]:
        token = f"{self.owner}:{secrets.token_hex(4)}"
        if not await self.plans.lock(env, plan_id, token, _LOCK_MS):
            raise PlanBusy(f"release plan {plan_id!r} is being changed by another request")
        try:
            yield
        finally:
            with contextlib.suppress(StoreError):
                await self.plans.unlock(env, plan_id, token)
