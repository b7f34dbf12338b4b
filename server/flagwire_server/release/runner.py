"""Release plans, the I/O part: operations and the loop that advances plans when holds end.

Every server runs the loop; people's operations (start, pause, resume, advance,
approve, roll back, abandon) come through the API of any server.  Each acts
under the plan's lock (``store/plans.py``), re-reads the plan, writes the flag
through the store's normal write path (versioned, audited, sent to clients)
and saves the plan with an event: what, when, the flag version and, for
writes, the clients' propagation ("applied by N of M in X ms").

The flag is written at the version the plan wrote last: a flag edited outside
the plan is not overwritten by the next stage; the plan pauses and says why.
Roll back writes the flag exactly as it was before the plan, whatever happened
since, in one write confirmed by the clients' acknowledgements.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import httpx

from flagwire.core.errors import ValidationError
from flagwire_server.background import stop_requested
from flagwire_server.release.plan import (
    TEMPLATES,
    flag_at_stage,
    flag_completed,
    old_variation,
    parse_stages,
)
from flagwire_server.release.prometheus import PrometheusError, breach, parse_guards, query
from flagwire_server.release.schedule import iso_ms
from flagwire_server.store.documents import Conflict, NotFound, Store, StoreError, WriteResult
from flagwire_server.store.plans import PlanStore
from flagwire_server.store.types import _body

__all__ = ["OPERATIONS", "PlanBusy", "Releases"]

log = logging.getLogger("flagwire.releases")

WaitFor = Callable[[str, int, float], Awaitable[dict[str, Any]]]
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
        on_event: Callable[[str, str], None] | None = None,
        on_guard: Callable[[str, str], None] | None = None,
    ) -> None:
        self.store = store
        self.plans = plans
        self.owner = owner
        self.wait_for = wait_for
        self.clock = clock
        self.interval = interval
        self.prometheus_url = prometheus_url
        self.on_event = on_event
        self.on_guard = on_guard
        self._http = httpx.AsyncClient(timeout=2.0)
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
        if guards and not self.prometheus_url:
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
            plan = await self._write_stage(env, plan, 0, what="started", actor=actor)
        except Exception:
            plan = {**plan, "status": "abandoned", "reason": "the first stage could not be written"}
            await self.plans.save(env, plan, ended=True)
            raise
        await self.plans.save(env, plan)
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
                plan = self._event(
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
                plan = self._event(plan, "resumed", actor=actor)
            elif op == "approve":
                plan = self._event({**plan, "approved": True}, "approved", actor=actor)
            elif op == "advance":
                plan = await self._next(env, plan, actor=actor, what="advanced")
            elif op == "rollback":
                plan = await self._rollback(env, plan, actor=actor, reason="rolled back by hand")
            elif op == "abandon":
                plan = self._event({**plan, "status": "abandoned"}, "abandoned", actor=actor)
            else:
                raise ValidationError([("operation", f"expected one of {', '.join(OPERATIONS)}")])
            await self.plans.save(env, plan, ended=plan["status"] in _ENDED)
            return plan

    # --- the loop -----------------------------------------------------------------

    def start_loop(self) -> None:
        self._task = asyncio.create_task(self._run(), name="flagwire-releases")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._http.aclose()

    async def _run(self) -> None:
        while not stop_requested():
            try:
                await self.tick()
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
                    if plan.get("guards") and plan.get("status") == "running":
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
        """Query each guard; on a breach roll back (or pause) at once, under the lock."""
        assert self.prometheus_url is not None
        for guard in plan["guards"]:
            try:
                value = await query(self._http, self.prometheus_url, guard["query"])
            except PrometheusError as exc:
                if self.on_guard is not None:
                    self.on_guard(env, "error")
                log.warning(
                    "releases: guard %s of %s not checked: %s", guard["name"], plan["id"], exc
                )
                continue
            why = breach(guard, value)
            if self.on_guard is not None:
                self.on_guard(env, "ok" if why is None else "breach")
            if why is None:
                continue
            detected = self.now_ms()
            async with self._locked(env, plan["id"]):
                plan = await self.plans.get(env, plan["id"])
                if plan.get("status") != "running":
                    return None
                reason = f"guard breached: {why}"
                if guard["action"] == "pause":
                    plan = self._event(
                        {**plan, "status": "paused", "reason": reason},
                        "paused by a guard",
                        actor="guard",
                        detected_ms=detected,
                    )
                else:
                    plan = await self._rollback(env, plan, actor="guard", reason=reason)
                    event = plan["events"][-1]
                    event["detected_ms"] = detected
                    event["detected_at"] = iso_ms(detected)
                    event["reason"] = reason
                await self.plans.save(env, plan, ended=plan["status"] in _ENDED)
                log.warning("release plan %s stopped: %s", plan["id"], reason)
                return plan
        return None

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
            plan = await self._next(env, plan, actor="release plan", what="advanced on schedule")
            await self.plans.save(env, plan, ended=plan["status"] in _ENDED)
            return plan

    # --- writes ---------------------------------------------------------------------

    async def _next(
        self, env: str, plan: dict[str, Any], *, actor: str, what: str
    ) -> dict[str, Any]:
        if plan["status"] != "running":
            raise Conflict(f"release plan {plan['id']!r} is {plan['status']}", 0)
        nxt = int(plan["stage"]) + 1
        try:
            if nxt >= len(plan["stages"]):
                doc = flag_completed(plan["before"], plan)
                res = await self._write(env, plan, doc, actor=actor)
                plan = {**plan, "status": "completed", "flag_version": res.version}
                return await self._confirmed(env, plan, res, "completed", actor=actor)
            return await self._write_stage(env, plan, nxt, what=what, actor=actor)
        except Conflict as exc:
            reason = (
                f"the flag was edited outside the plan ({exc}); resume to continue, or roll back"
            )
            return self._event(
                {**plan, "status": "paused", "reason": reason}, "paused", actor=actor
            )

    async def _write_stage(
        self, env: str, plan: dict[str, Any], stage: int, *, what: str, actor: str
    ) -> dict[str, Any]:
        doc = flag_at_stage(plan["before"], plan, stage)
        res = await self._write(env, plan, doc, actor=actor)
        plan = {
            **plan,
            "stage": stage,
            "stage_started_ms": self.now_ms(),
            "approved": False,
            "flag_version": res.version,
        }
        return await self._confirmed(env, plan, res, what, actor=actor)

    async def _rollback(
        self, env: str, plan: dict[str, Any], *, actor: str, reason: str
    ) -> dict[str, Any]:
        started = self.now_ms()
        current = await self.store.get_doc(env, "flag", plan["flag"])
        body = _body(plan["before"], plan["flag"])
        res = await self.store.put(
            env,
            "flag",
            body,
            actor=f"{actor} (release plan {plan['id']})",
            expected=current["version"],
            key=plan["flag"],
        )
        plan = {**plan, "status": "rolled_back", "reason": reason, "flag_version": res.version}
        plan = await self._confirmed(env, plan, res, "rolled back", actor=actor)
        plan["events"][-1]["detected_ms"] = started
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

    async def _confirmed(
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
        return self._event(plan, what, actor=actor, **extra)

    def _event(
        self, plan: dict[str, Any], what: str, *, actor: str, **extra: Any
    ) -> dict[str, Any]:
        now = self.now_ms()
        if self.on_event is not None:
            self.on_event(str(plan.get("env", "")), what)
        event = {"at": iso_ms(now), "at_ms": now, "what": what, "by": actor, "stage": plan["stage"]}
        event.update(extra)
        return {**plan, "events": [*plan.get("events", []), event][-200:]}

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
