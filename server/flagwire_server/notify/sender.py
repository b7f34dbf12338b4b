"""One delivery attempt over HTTP: sign, check the address, POST, keep the answer's start.

The notifier decides what to send and when to try again; this module only
makes one request and says what happened, as an :class:`Attempt`, never
raising for what a receiver or the network did.  Policy (``DeliveryPolicy``)
lives here too: the timeout and the private-address rule act on the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
import urllib.parse
from dataclasses import dataclass
from typing import Final

import httpx

from flagwire_server.notify import signature
from flagwire_server.notify.hooks import is_private

__all__ = ["BODY_KEEP", "Attempt", "DeliveryPolicy", "Sender"]

#: Bytes of a receiver's response body kept in the delivery log.
BODY_KEEP: Final = 1024
_USER_AGENT: Final = "flagwire-webhooks/1"


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    """How hard a delivery tries (``FLAGWIRE_WEBHOOK_*``, docs/webhooks.md)."""

    #: Seconds one attempt may take (connect, send, first byte, body).
    timeout: float = 10.0
    #: Attempts per delivery, the first included.
    attempts: int = 6
    #: Nominal wait after the first failed attempt, doubled after each (seconds).
    retry_base: float = 2.0
    #: Longest nominal wait between two attempts (seconds).
    retry_cap: float = 300.0
    #: Whether receivers on loopback, private and link-local addresses are allowed.
    allow_private: bool = True

    @property
    def longest_ms(self) -> int:
        """An upper bound of one delivery's duration, from first attempt to giving up."""
        waits = sum(min(self.retry_cap, self.retry_base * 2**i) for i in range(self.attempts - 1))
        return int((self.attempts * (self.timeout + 1) + waits) * 1000)


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one request got: a status (None: no answer), why not, and how long it took."""

    status: int | None
    response: str
    error: str
    duration_ms: float
    #: Not sent: the address is private and FLAGWIRE_WEBHOOK_ALLOW_PRIVATE=0.
    refused: bool = False


class Sender:
    """Makes delivery attempts, at most ``max_requests`` at once."""

    def __init__(self, policy: DeliveryPolicy, max_requests: int = 16) -> None:
        self.policy = policy
        self._requests = asyncio.Semaphore(max_requests)
        self._http: httpx.AsyncClient | None = None

    def start(self) -> None:
        t = self.policy.timeout
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(t, connect=min(t, 5.0)),
            follow_redirects=False,
            trust_env=False,
            headers={"User-Agent": _USER_AGENT},
        )

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    async def send(self, url: str, secret: str, body: bytes, headers: dict[str, str]) -> Attempt:
        """POST ``body`` to ``url``, signed with ``secret`` now, with ``headers`` besides."""
        started = time.perf_counter()
        refused = await self._refused(url)
        if refused:
            return Attempt(None, "", refused, _ms(started), refused=True)
        status: int | None = None
        response = error = ""
        try:
            status, response = await self._post(url, secret, body, headers)
        except httpx.TimeoutException:
            error = f"timed out after {self.policy.timeout:g} s"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        return Attempt(status, response, error, _ms(started))

    async def _post(
        self, url: str, secret: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, str]:
        assert self._http is not None, "start() first"
        signed = {
            "Content-Type": "application/json",
            **headers,
            signature.HEADER: signature.sign(secret, int(time.time()), body),
        }
        async with self._requests:
            req = self._http.build_request("POST", url, content=body, headers=signed)
            resp = await self._http.send(req, stream=True)
            try:
                kept = bytearray()
                async for chunk in resp.aiter_bytes():
                    kept += chunk[: BODY_KEEP - len(kept)]
                    if len(kept) >= BODY_KEEP:
                        break
            finally:
                await resp.aclose()
        return resp.status_code, kept.decode("utf-8", "replace")

    async def _refused(self, url: str) -> str:
        """Why ``url`` may not be called now (empty: it may), under ``allow_private=False``."""
        if self.policy.allow_private:
            return ""
        host = urllib.parse.urlsplit(url).hostname or ""
        if is_private(host):
            return f"{host} is a private address (FLAGWIRE_WEBHOOK_ALLOW_PRIVATE=0)"
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None)
        except OSError:
            return ""  # the request fails to resolve it too, and is retried
        for info in infos:
            address = str(info[4][0]).partition("%")[0]
            with contextlib.suppress(ValueError):
                if is_private(str(ipaddress.ip_address(address))):
                    return (
                        f"{host} resolves to the private address {address} "
                        "(FLAGWIRE_WEBHOOK_ALLOW_PRIVATE=0)"
                    )
        return ""


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)
