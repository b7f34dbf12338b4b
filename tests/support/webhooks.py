"""Helpers the webhook tests share: fast delivery settings, creating a webhook, polling."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Final

import httpx
import orjson

from tests.support.receiver import Received

__all__ = ["BASE", "FAST", "add_hook", "contains", "falsy", "payloads"]

BASE: Final = "/api/v1/environments/production"
#: Fast retries, short timeouts: a test waits milliseconds, not minutes.
FAST: Final = {
    "FLAGWIRE_WEBHOOK_RETRY_BASE": "0.05",
    "FLAGWIRE_WEBHOOK_TIMEOUT": "2",
    "FLAGWIRE_WEBHOOK_ATTEMPTS": "3",
}


async def add_hook(http: httpx.AsyncClient, url: str, events: list[str]) -> tuple[str, str]:
    """Create a webhook in ``production``; its id and secret."""
    r = await http.post(f"{BASE}/webhooks", json={"url": url, "events": events})
    assert r.status_code == 201, r.text
    return r.json()["webhook"]["id"], r.json()["secret"]


def payloads(requests: list[Received], event_type: str) -> list[dict[str, Any]]:
    """The bodies of the requests carrying ``event_type``."""
    return [orjson.loads(q.body) for q in requests if q.headers.get("flagwire-event") == event_type]


async def falsy(value: Awaitable[Any]) -> bool:
    """For ``poll``: true once the awaited value is falsy (nothing pending, say)."""
    return not await value


async def contains(value: Awaitable[Any], item: str) -> bool:
    return item in await value
