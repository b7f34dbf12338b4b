"""Fleet insight over REST: per-flag figures, the SDK inventory, the cleanup report.

What clients report arrives through the stream (``stream/reports.py``) and is
aggregated in Redis (``store/insight.py``); these handlers only read it and
combine it with the flags, so every answer is as fresh as the last flush
(``FLAGWIRE_INSIGHT_FLUSH``, 5 s by default).
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response

from flagwire.core.limits import KEY_RE
from flagwire.core.reports import MAX_WATCHED_FLAGS
from flagwire_server.api.auth import Principal
from flagwire_server.api.helpers import (
    env_param,
    int_param,
    json_response,
    key_param,
    read_json,
    store,
)
from flagwire_server.api.problems import Problem
from flagwire_server.services import services_of
from flagwire_server.store.archive import FlagArchive
from flagwire_server.store.insight import DAY_MS

__all__ = [
    "archive_flag",
    "archived",
    "blocked_by",
    "cleanup",
    "clients",
    "flag_insight",
    "get_watched",
    "put_watched",
    "restore_flag",
    "updated_ms",
]

#: Longest window and most buckets one insight request may ask for.
MAX_WINDOW_S: Final = 90 * 86_400
MAX_BUCKETS: Final = 2_000


def _now_ms() -> int:
    return int(time.time() * 1000)


async def flag_insight(request: Request, who: Principal | None) -> Response:
    env = env_param(request)
    key = key_param(request, "flag")
    doc = await store(request).get_doc(env, "flag", key)  # 404 for an unknown flag
    window = int_param(request, "window", 86_400, 60, MAX_WINDOW_S)
    step = int_param(request, "step", 3_600 if window > 86_400 else 300, 60, MAX_WINDOW_S)
    if window // step > MAX_BUCKETS:
        raise Problem(
            400,
            f"window/step gives more than {MAX_BUCKETS} buckets",
            errors=[("step", f"at least {-(-window // MAX_BUCKETS)} for this window")],
        )
    ins = services_of(request).insight.store
    end = (_now_ms() // (step * 1000) + 1) * step * 1000
    start = end - window * 1000
    series = await ins.series(env, key, start, end, step)
    totals = await ins.totals(env, key, start, end)
    last = (await ins.last_evaluated(env)).get(key)
    apps = await ins.apps(env, key)
    apps_over = await ins.apps_over_cap(env, key)
    variations = doc.get("variations") or []
    n = max(1, -(-(end - start) // (step * 1000)))
    out = []
    for index in sorted(set(series) | set(totals)):
        t = totals.get(index, {"reasons": {}, "events": {}, "contexts": 0})
        row = series.get(index, [0] * n)
        out.append(
            {
                "variation": index,
                "value": variations[index] if 0 <= index < len(variations) else None,
                "evaluations": sum(row),
                "series": row,
                "reasons": t["reasons"],
                "contexts": t["contexts"],
                "events": t["events"],
            }
        )
    return json_response(
        {
            "env": env,
            "flag": key,
            "start": start,
            "end": end,
            "step": step,
            "variations": out,
            "last_evaluated": last,
            "applications": [
                {"app": app, "last_evaluated": ms}
                for app, ms in sorted(apps.items(), key=lambda kv: -kv[1])
            ],
            "applications_over_cap": apps_over,
        }
    )


async def clients(request: Request, who: Principal | None) -> Response:
    env = env_param(request)
    info = await store(request).get_env(env)
    entries = await services_of(request).insight.store.clients(env)
    version = int(info.get("version", 0))
    for e in entries:  # another process's entry may be a flush behind the environment
        e["env_version"] = max(int(e.get("env_version", 0)), version)
        e["lag"] = max(0, e["env_version"] - int(e.get("applied_version", 0)))
    return json_response({"env": env, "env_version": version, "clients": entries})


def updated_ms(doc: dict[str, Any]) -> int | None:
    raw = doc.get("updated_at") or doc.get("created_at")
    if isinstance(raw, int | float):
        return int(raw * 1000) if raw < 1e11 else int(raw)
    if isinstance(raw, str):
        try:
            return int(dt.datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp() * 1000)
        except ValueError:
            return None
    return None


def blocked_by(doc: dict[str, Any], flags: dict[str, dict[str, Any]]) -> list[str]:
    """Prerequisites that cannot be met as the flags stand (missing, or off serving another)."""
    out = []
    for pre in doc.get("prerequisites") or []:
        other = flags.get(str(pre.get("key")))
        if other is None or (
            not other.get("on", False) and other.get("off_variation") != pre.get("variation")
        ):
            out.append(str(pre.get("key")))
    return out


async def cleanup(request: Request, who: Principal | None) -> Response:
    """Which flags can go: not evaluated, one variation to everyone, unchanged, blocked."""
    env = env_param(request)
    days = int_param(request, "days", 7, 1, 3650)
    docs = {str(d["key"]): d for d in await store(request).list_docs(env, "flag")}
    ins = services_of(request).insight.store
    last = await ins.last_evaluated(env)
    now = _now_ms()
    since = now - days * DAY_MS
    rows = []
    for key, doc in sorted(docs.items()):
        lasted = last.get(key)
        served = await ins.variations_since(env, key, since) if lasted else set()
        updated = updated_ms(doc)
        blocked = blocked_by(doc, docs)
        reasons = []
        if lasted is None or lasted < since:
            reasons.append("not_evaluated")
        elif len(served) == 1:
            reasons.append("one_variation")
        if updated is not None and updated < since:
            reasons.append("unchanged")
        if blocked:
            reasons.append("blocked")
        rows.append(
            {
                "key": key,
                "on": bool(doc.get("on")),
                "last_evaluated": lasted,
                "updated": updated,
                "served": sorted(served),
                "blocked_by": blocked,
                "reasons": reasons,
            }
        )
    return json_response({"env": env, "days": days, "flags": rows})


async def get_watched(request: Request, who: Principal | None) -> Response:
    env = env_param(request)
    await store(request).get_env(env)
    flags = await services_of(request).insight.store.watched(env)
    return json_response({"env": env, "flags": flags})


async def put_watched(request: Request, who: Principal | None) -> Response:
    env = env_param(request)
    await store(request).get_env(env)
    body = await read_json(request)
    flags = body.get("flags") if isinstance(body, dict) else None
    if not isinstance(flags, list) or len(flags) > MAX_WATCHED_FLAGS:
        raise Problem(
            422, f"expected {{'flags': [keys]}} with at most {MAX_WATCHED_FLAGS} flag keys"
        )
    bad = [f for f in flags if not isinstance(f, str) or not KEY_RE.match(f)]
    if bad:
        raise Problem(422, "not flag keys", errors=[("flags", repr(b)[:80]) for b in bad[:10]])
    await services_of(request).insight.store.set_watched(env, flags)
    return json_response({"env": env, "flags": sorted(set(flags))})


def _actor(who: Principal | None) -> str:
    return who.name if who else "anonymous"


async def archive_flag(request: Request, who: Principal | None) -> Response:
    """Hide a flag from SDKs (a delete they receive) and keep it to restore."""
    env = env_param(request)
    key = key_param(request, "flag")
    res = await FlagArchive(store(request)).archive(env, key, actor=_actor(who))
    return json_response({"key": key, "archived": True, "env_version": res.env_version})


async def restore_flag(request: Request, who: Principal | None) -> Response:
    env = env_param(request)
    key = key_param(request, "flag")
    res = await FlagArchive(store(request)).restore(env, key, actor=_actor(who))
    return json_response({"key": key, "archived": False, "env_version": res.env_version})


async def archived(request: Request, who: Principal | None) -> Response:
    env = env_param(request)
    await store(request).get_env(env)
    return json_response({"env": env, "flags": await FlagArchive(store(request)).list(env)})
