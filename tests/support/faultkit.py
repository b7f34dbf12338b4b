"""Shared pieces of the fault scenarios: fast server settings, fast clients, a writer.

Server and client timeouts are shortened (heartbeat 1 s, ping timeout 2 s,
client timeout 3 s) so that each scenario runs in seconds; every wait is a
poll with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import time
from typing import Any

import httpx

from flagwire import BackoffSettings, FlagClient
from tests.support.builders import flag
from tests.support.invariants import Admin, Write

__all__ = [
    "CLIENT_TIMEOUT",
    "FAST_ENV",
    "Writer",
    "fast_client",
    "metric_value",
    "no_secrets_logged",
    "readyz",
]

#: Server settings for fault scenarios (see ``flagwire_server.config``).
FAST_ENV = {
    "FLAGWIRE_HEARTBEAT": "1",
    "FLAGWIRE_PING_TIMEOUT": "2",
    "FLAGWIRE_SHUTDOWN_TIMEOUT": "2",
}
#: The FlagClient timeout used in the scenarios (a dead connection is noticed within it).
CLIENT_TIMEOUT = 3.0


def fast_client(url: str, key: str, **kwargs: Any) -> FlagClient:
    kwargs.setdefault("heartbeat_timeout", CLIENT_TIMEOUT)
    kwargs.setdefault("start_timeout", 10.0)
    kwargs.setdefault("backoff", BackoffSettings(initial=0.2, cap=1.0, going_away=0.5))
    return FlagClient(url, key, **kwargs)


async def readyz(base_url: str) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(timeout=2.0) as http:
        try:
            resp = await http.get(base_url + "/readyz")
        except httpx.HTTPError:
            return 0, {}
        try:
            return resp.status_code, resp.json()
        except ValueError:
            return resp.status_code, {}


async def metric_value(
    base_url: str, name: str, labels: dict[str, str] | None = None
) -> float | None:
    """One sample of ``/metrics`` (None when absent)."""
    async with httpx.AsyncClient(timeout=3) as http:
        text = (await http.get(base_url + "/metrics")).text
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in (labels or {}).items()):
            return float(m.group(3))
    return None


class Writer:
    """Writes continuously in the background: PUTs of ``keys`` (on/off), some deletes.

    Every write carries a unique ``description`` marker (``<tag><n>``), so a test
    can prove that a refused write left nothing behind.
    """

    def __init__(
        self,
        admin: Admin,
        tag: str = "w",
        env: str = "production",
        keys: tuple[str, ...] = ("k0", "k1", "k2", "k3", "k4"),
        interval: float = 0.02,
        url: str | None = None,
        timeout: float = 6.0,
    ) -> None:
        self.admin, self.tag, self.env, self.keys = admin, tag, env, keys
        self.interval, self.url, self.timeout = interval, url, timeout
        self.n = itertools.count()
        self.mine: list[Write] = []
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> Writer:
        self.admin.background.append(self)
        self._task = asyncio.create_task(self._run(), name="writer")
        return self

    async def one(self) -> Write:
        n = next(self.n)
        key = self.keys[n % len(self.keys)]
        if n % 11 == 10:
            w = await self.admin.delete_flag(self.env, key, url=self.url, http_timeout=self.timeout)
        else:
            w = await self.admin.put_flag(
                self.env,
                flag(key, on=bool(n % 2), description=f"{self.tag}{n}"),
                url=self.url,
                http_timeout=self.timeout,
            )
        w.body = w.body if isinstance(w.body, dict) else {"raw": w.body}
        w.body["_marker"] = f"{self.tag}{n}"
        w.body["_started"] = time.monotonic() - w.seconds
        self.mine.append(w)
        return w

    async def _run(self) -> None:
        while not self._stopping:
            await self.one()
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        """Stop after the write in flight has been answered (or cancel it after 10 s)."""
        self._stopping = True
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), 10)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def acked(self) -> list[Write]:
        return [w for w in self.mine if w.acked]


def no_secrets_logged(servers: list[Any], secrets: list[str]) -> None:
    """Assert that no server's output (stdout and stderr so far) holds any of ``secrets``
    (whole, or the random part after ``fw_<kind>_``)."""
    leaks = []
    for server in servers:
        output = server.output()
        for secret in secrets:
            for needle in {secret, secret.split("_", 2)[-1]}:
                if len(needle) >= 12 and needle in output:
                    line = next(ln for ln in output.splitlines() if needle in ln)
                    leaks.append(f"{secret[:10]}... in {server.url}: {line[:200]}")
    assert not leaks, "keys found in server logs:\n" + "\n".join(leaks)
