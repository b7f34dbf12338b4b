"""Webhook events: their types, which webhooks want them, and their JSON bodies (pure).

Every event is one of :data:`EVENT_TYPES`; a webhook subscribes to some of
them by name, to a family (``plan.*``) or to all (``*``).  An event's id is
derived from where it was read (environment, stream, entry id), so the same
change read twice (a server died before acknowledging it) has the same id and
a receiver can drop the copy.

Body (``docs/webhooks.md`` documents each ``data``)::

    {"id": "evt_…", "type": "flag.changed", "env": "production",
     "created_at": "2026-12-02T08:00:00.000Z", "webhook_id": "wh_…", "data": {…}}
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any, Final

import orjson

__all__ = [
    "EVENT_TYPES",
    "PLAN_EVENTS",
    "Event",
    "from_audit",
    "from_published",
    "iso_ms",
    "matches",
    "plan_event",
    "schedule_event",
]

#: What the release runner says (``release/runner.py``) -> the event's name after ``plan.``.
_PLAN_WHAT: Final = {
    "started": "started",
    "advanced": "advanced",
    "advanced on schedule": "advanced",
    "completed": "completed",
    "paused": "paused",
    "paused by a guard": "paused",
    "resumed": "resumed",
    "approved": "approved",
    "rolled back": "rolled_back",
    "abandoned": "abandoned",
}
PLAN_EVENTS: Final = tuple(f"plan.{n}" for n in dict.fromkeys(_PLAN_WHAT.values()))
EVENT_TYPES: Final = ("flag.changed", "segment.changed", "schedule.executed", *PLAN_EVENTS)


def matches(subscribed: list[str], event_type: str) -> bool:
    """Whether a webhook subscribed to ``subscribed`` wants ``event_type``."""
    family = event_type.partition(".")[0] + ".*"
    return any(s in ("*", event_type, family) for s in subscribed)


def iso_ms(ms: int) -> str:
    at = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened in ``env``, to be delivered to the webhooks that want it."""

    id: str
    type: str
    env: str
    at_ms: int
    data: dict[str, Any]

    def body(self, webhook_id: str) -> bytes:
        """The request body for one webhook (the bytes that are signed)."""
        return orjson.dumps(
            {
                "id": self.id,
                "type": self.type,
                "env": self.env,
                "created_at": iso_ms(self.at_ms),
                "webhook_id": webhook_id,
                "data": self.data,
            }
        )


def _event_id(env: str, source: str, entry_id: str) -> str:
    digest = hashlib.sha256(f"{env}\0{source}\0{entry_id}".encode()).hexdigest()
    return f"evt_{digest[:24]}"


def _doc(text: str | None) -> Any:
    if not text:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


def from_audit(env: str, entry_id: str, fields: dict[str, str]) -> Event | None:
    """The event of one audit-stream entry (None: not a flag or segment change).

    A flags-as-code apply writes one entry for many documents: it is a
    ``flag.changed`` with ``kind`` ``apply`` and the apply's summary as ``after``.
    """
    kind = fields.get("kind", "")
    if kind not in ("flag", "segment", "apply"):
        return None
    at_ms = int(fields.get("t", "0") or 0) or int(entry_id.partition("-")[0] or 0)
    data = {
        "kind": kind,
        "key": fields.get("key", ""),
        "action": fields.get("action", ""),
        "actor": fields.get("actor", ""),
        "env_version": int(fields.get("version", "0") or 0),
        "flag_version": int(fields.get("flag_version", "0") or 0),
        "before": _doc(fields.get("before")),
        "after": _doc(fields.get("after")),
    }
    event_type = "segment.changed" if kind == "segment" else "flag.changed"
    return Event(_event_id(env, "audit", entry_id), event_type, env, at_ms, data)


def from_published(env: str, entry_id: str, fields: dict[str, str]) -> Event | None:
    """The event of one entry of the webhook events stream (None: unreadable)."""
    raw = _doc(fields.get("event"))
    if not isinstance(raw, dict) or raw.get("type") not in EVENT_TYPES:
        return None
    data = raw.get("data")
    at_ms = int(raw.get("at_ms") or entry_id.partition("-")[0] or 0)
    return Event(
        _event_id(env, "events", entry_id),
        str(raw["type"]),
        env,
        at_ms,
        data if isinstance(data, dict) else {},
    )


def schedule_event(record: dict[str, Any], now_ms: int) -> dict[str, Any]:
    """What to publish when a scheduled change finished (applied, skipped, failed, missed)."""
    return {"type": "schedule.executed", "at_ms": now_ms, "data": {"change": record}}


def plan_event(plan: dict[str, Any], event: dict[str, Any]) -> dict[str, Any] | None:
    """What to publish for a release plan's event (None: one webhooks do not carry)."""
    name = _PLAN_WHAT.get(str(event.get("what", "")))
    if name is None:
        return None
    summary = {k: v for k, v in plan.items() if k not in ("events", "before")}
    return {
        "type": f"plan.{name}",
        "at_ms": int(event.get("at_ms") or 0),
        "data": {"plan": summary, "event": event},
    }
