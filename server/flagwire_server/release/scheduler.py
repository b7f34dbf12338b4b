"""The scheduler: every server runs one, and each due change is executed once by one of them.

Why this shape: the runner only moves data between the lease (``store/schedule.py``),
the rules (``schedule.py``, pure) and the store's normal write path, so an
execution is exactly the write the admin API would make, with its audit entry,
its change message and its ``?wait`` for acknowledgements.

Exactly once, also when a server dies mid-execution: the write names the change
in ``updated_by`` (``scheduler, created by alice (sch_…)``) and is made at the
flag version read just before it.  A server that takes over an expired lease
first looks for that name in the flag and its history, so a write that was made
but not yet recorded is recorded, not repeated; and a stalled server that wakes
up after a takeover writes at a version that no longer exists (a conflict).

The clock is injectable (``clock``, seconds) so tests step through due times,
leases and grace periods without waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from flagwire.core.errors import ValidationError
from flagwire_server.background import stop_requested
from flagwire_server.release.schedule import decide, iso_ms, marker, scheduler_actor
from flagwire_server.store.documents import Conflict, NotFound, Store, StoreError, WriteResult
from flagwire_server.store.schedule import MAX_CLAIM, ScheduleStore

__all__ = ["Scheduler"]

log = logging.getLogger("flagwire.scheduler")

WaitFor = Callable[[str, int, float], Awaitable[dict[str, Any]]]
Listener = Callable[[str, dict[str, Any]], Awaitable[None]]
#: Retries of a write that lost a race with another writer of the same flag.
_WRITE_TRIES: Final = 3


class Scheduler:
    """Claims and executes the due scheduled changes of every environment.

    Args:
        store: the flag store (its write path is the API's).
        schedules: the scheduled changes and their leases.
        owner: this process's instance id (the lease holder's name).
        wait_for: ``(env, env_version, seconds) -> propagation``, the fan-out's wait.
        clock: seconds since the epoch (``time.time``; tests pass their own).
        grace: seconds after its due time a change may still run (else missed).
        lease: seconds a claim holds a change before another server may take it over.
        interval: longest sleep between two looks for new changes.
        on_finish: called with ``(env, record)`` after each outcome (metrics, webhooks).
    """

    def __init__(
        self,
        store: Store,
        schedules: ScheduleStore,
        *,
        owner: str,
        wait_for: WaitFor | None = None,
        clock: Callable[[], float] = time.time,
        grace: float = 300.0,
        lease: float = 10.0,
        interval: float = 0.5,
        on_finish: Listener | None = None,
    ) -> None:
        self.store = store
        self.schedules = schedules
        self.owner = owner
        self.wait_for = wait_for
        self.clock = clock
        self.grace_ms = int(grace * 1000)
        self.lease_ms = int(lease * 1000)
        self.interval = interval
        self.on_finish = on_finish
        self._task: asyncio.Task[None] | None = None
        self._waits: set[asyncio.Task[dict[str, Any]]] = set()
        self._wake = asyncio.Event()

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # --- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Run the loop in a task (the app's lifespan); the first look is at once."""
        self._task = asyncio.create_task(self._run(), name="flagwire-scheduler")

    async def stop(self) -> None:
        for task in list(self._waits):
            task.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def poke(self) -> None:
        """A change was scheduled or edited here: look again now, not at the next interval."""
        self._wake.set()

    async def _run(self) -> None:
        while not stop_requested():
            delay = self.interval
            try:
                await self.tick()
                soonest = await self._next_due_ms()
                if soonest is not None:
                    delay = min(delay, max(0.0, (soonest - self.now_ms()) / 1000))
            except StoreError as exc:
                log.warning("scheduler: store unavailable (%s); trying again", exc)
            except Exception:
                log.exception("scheduler: tick failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)

    async def _envs(self) -> list[str]:
        return [str(e["key"]) for e in await self.store.list_envs()]

    async def _next_due_ms(self) -> int | None:
        dues = [await self.schedules.next_due_ms(env) for env in await self._envs()]
        known = [d for d in dues if d is not None]
        return min(known) if known else None

    # --- one look -------------------------------------------------------------

    async def tick(self) -> list[dict[str, Any]]:
        """Claim and execute every due change now; returns the records this call finished.

        Changes of different flags run concurrently (one slow flag must not make
        the others late); the changes of one flag run one after the other, in
        the order they were due.
        """
        done: list[dict[str, Any]] = []
        for env in await self._envs():
            while True:
                ids = await self.schedules.claim(
                    env, owner=self.owner, now_ms=self.now_ms(), lease_ms=self.lease_ms
                )
                done.extend(await self._run_claimed(env, ids))
                if len(ids) < MAX_CLAIM:
                    break
        return done

    async def _run_claimed(self, env: str, ids: list[str]) -> list[dict[str, Any]]:
        done: list[dict[str, Any]] = []
        if ids:
            by_flag: dict[str, list[dict[str, Any]]] = {}
            for change_id in ids:  # claimed in due order
                with contextlib.suppress(NotFound):
                    record = await self.schedules.get(env, change_id)
                    by_flag.setdefault(str(record["flag"]), []).append(record)
            results = await asyncio.gather(
                *(self._run_flag(env, records) for records in by_flag.values())
            )
            done.extend(r for batch in results for r in batch)
        return done

    async def _run_flag(self, env: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for record in records:
            final = await self._execute(env, record)
            if final is not None:
                out.append(final)
        return out

    async def execute(self, env: str, change_id: str) -> dict[str, Any] | None:
        """Execute one claimed change; None when the outcome could not be recorded."""
        return await self._execute(env, await self.schedules.get(env, change_id))

    async def _execute(self, env: str, record: dict[str, Any]) -> dict[str, Any] | None:
        change_id = record["id"]
        if record.get("status") != "pending":
            return None
        outcome = await self._outcome(env, record)
        final = {**record, **outcome, "executed_by": self.owner}
        if not await self.schedules.finish(env, final, owner=self.owner):
            log.warning("scheduler: lease on %s lost before its outcome was recorded", change_id)
            return None
        if final["status"] == "applied" and final.get("env_version") and self.wait_for:
            # Measured apart: waiting for acknowledgements must not make the next change late.
            task = asyncio.create_task(self._propagation(env, final))
            self._waits.add(task)
            task.add_done_callback(self._waits.discard)
        # A missed or failed change needs a person: a warning, not an info line.
        level = logging.INFO if final["status"] in ("applied", "skipped") else logging.WARNING
        log.log(
            level,
            "scheduled change %s: %s",
            change_id,
            final["status"],
            extra={"env": env, "flag": final["flag"], "reason": final.get("reason", "")},
        )
        if self.on_finish is not None:
            try:
                await self.on_finish(env, final)
            except Exception:
                log.exception("scheduler: on_finish failed for %s", change_id)
        return final

    async def _outcome(self, env: str, record: dict[str, Any]) -> dict[str, Any]:
        for _ in range(_WRITE_TRIES):
            current = await self._current(env, record["flag"])
            earlier = await self._written_by(env, record, current)
            if earlier is not None:
                return self._applied(record, earlier, None, note="found written after a takeover")
            version = current.get("version") if current else None
            decision = decide(
                record,
                now_ms=self.now_ms(),
                grace_ms=self.grace_ms,
                current_version=version if isinstance(version, int) else None,
            )
            if decision.status != "write":
                return {"status": decision.status, "reason": decision.reason, **self._times()}
            try:
                res = await self._write(env, record, version if isinstance(version, int) else 0)
            except Conflict:
                continue  # another writer got there first: look again (maybe it was us)
            except (ValidationError, NotFound) as exc:
                return {"status": "failed", "reason": _reason(exc), **self._times()}
            return self._applied(record, res.doc, res, note=decision.reason)
        return {"status": "failed", "reason": "the flag kept changing under the scheduler"}

    async def _current(self, env: str, flag: str) -> dict[str, Any] | None:
        try:
            return await self.store.get_doc(env, "flag", flag)
        except NotFound:
            return None

    async def _written_by(
        self, env: str, record: dict[str, Any], current: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        """The version this change wrote, if an earlier execution wrote it."""
        tag = marker(record["id"])
        candidates = [current] if current else []
        with contextlib.suppress(NotFound):
            candidates += await self.store.history(env, "flag", record["flag"])
        return next((d for d in candidates if str(d.get("updated_by", "")).endswith(tag)), None)

    async def _write(self, env: str, record: dict[str, Any], expected: int) -> WriteResult:
        actor, flag, action = scheduler_actor(record), record["flag"], record["action"]
        if action == "restore":
            return await self.store.restore(
                env, "flag", flag, int(record["version"]), actor=actor, expected=expected
            )
        if action == "replace":
            return await self.store.put(
                env, "flag", record["change"], actor=actor, expected=expected, key=flag
            )
        if action == "rollout":
            # The new fallthrough replaces the old one whole: a merge patch would keep
            # a ``variation`` beside the new ``rollout``.
            doc = await self.store.get_doc(env, "flag", flag)
            body = {**doc, "fallthrough": record["change"]}
            return await self.store.put(env, "flag", body, actor=actor, expected=expected, key=flag)
        return await self.store.patch(
            env, "flag", flag, record["change"], actor=actor, expected=expected
        )

    def _times(self) -> dict[str, Any]:
        now = self.now_ms()
        return {"finished_ms": now, "finished_at": iso_ms(now)}

    def _applied(
        self,
        record: dict[str, Any],
        doc: dict[str, Any] | None,
        res: WriteResult | None,
        *,
        note: str,
    ) -> dict[str, Any]:
        times = self._times()
        out: dict[str, Any] = {
            "status": "applied",
            "reason": note,
            "applied_ms": times["finished_ms"],
            "applied_at": times["finished_at"],
            "lateness_ms": times["finished_ms"] - int(record["due_ms"]),
            "flag_version": (doc or {}).get("version"),
            **times,
        }
        if res is not None:
            out["env_version"] = res.env_version if res.changed else None
            out["changed"] = res.changed
            if not res.changed:
                out["reason"] = "the flag already was as the change asks; nothing sent"
        return out

    async def _propagation(self, env: str, record: dict[str, Any]) -> dict[str, Any]:
        assert self.wait_for is not None
        try:
            prop = await self.wait_for(env, int(record["env_version"]), float(record["wait"]))
        except Exception:
            log.exception("scheduler: propagation wait failed for %s", record["id"])
            return record
        acked, connected = prop.get("acknowledged"), prop.get("connected")
        summary = f"applied by {acked} of {connected} in {prop.get('max_ms')} ms"
        record = {**record, "propagation": prop, "summary": summary}
        with contextlib.suppress(StoreError):
            await self.schedules.annotate(env, record)
        return record


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "invalid: " + "; ".join(f"{f or '(document)'}: {m}" for f, m in exc.errors)
    return str(exc)
