"""Blocking calls to a running server's HTTP API, shared by every kind of test server.

:class:`~tests.support.server.ServerProcess` and
:class:`~tests.support.inprocess.InProcessServer` both mix this in, so a test
calls ``server.api("POST", "/keys", {...})`` the same way whichever it runs
against.  Async tests that record every write use
:class:`tests.support.invariants.Admin` instead.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

__all__ = ["ServerHttp"]


class ServerHttp:
    """``get``/``request``/``api`` against ``self.url`` with ``self.admin_key``."""

    url: str
    admin_key: str

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        return self.request("GET", path, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        key: str | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, str]:
        """A plain HTTP request (admin key by default); returns ``(status, text)``, status 0
        when nothing answered."""
        headers = {}
        if key or self.admin_key:  # a server started without one has no admin key
            headers["Authorization"] = f"Bearer {key or self.admin_key}"
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            resp = httpx.request(
                method,
                self.url + path,
                content=json.dumps(body).encode() if body is not None else None,
                headers=headers,
                timeout=timeout,
            )
        except httpx.HTTPError as exc:
            return 0, str(exc)
        return resp.status_code, resp.text

    def api(self, method: str, path: str, body: Any = None, *, key: str | None = None) -> Any:
        """Call ``/api/v1`` + path; returns the JSON body, raises on a non-2xx status."""
        status, text = self.request(method, "/api/v1" + path, body, key=key)
        if not 200 <= status < 300:
            raise AssertionError(f"{method} {path} -> {status}: {text[:500]}")
        return json.loads(text) if text else None
