"""The CLI's admin-API client: one HTTP session, every failure one line.

Why the CLI goes over HTTP and not straight to Redis: it then passes through
the same validation, versioning, audit and rate limits as every other caller,
and works against any remote server.  Every command module imports this one;
none imports another command module (the command table is in ``main.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any, NoReturn

import httpx
import orjson
import typer

__all__ = ["Api", "CliError", "cli_errors", "fail", "wait_params"]


class CliError(Exception):
    """A failure the user can act on; printed as ``error: <message>``, exit status 1."""


def fail(message: str) -> NoReturn:
    raise CliError(message)


#: The sessions opened inside the current :func:`cli_errors` block, closed when it ends.
_opened: ContextVar[list[Api] | None] = ContextVar("flagwire_cli_sessions", default=None)


@contextlib.contextmanager
def cli_errors() -> Iterator[None]:
    """Turn a :class:`CliError` into one line on stderr and exit status 1.

    Also closes the :class:`Api` sessions the command opened: a command run
    inside a longer-lived process (a test, a script calling the Typer app)
    must not leave its connections open behind it.
    """
    opened: list[Api] = []
    token = _opened.set(opened)
    try:
        yield
    except CliError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        _opened.reset(token)
        for api in opened:
            api.close()


def wait_params(wait: float | None) -> dict[str, Any]:
    """``?wait=N`` when the user asked to wait for acknowledgements."""
    return {"wait": wait} if wait is not None else {}


class Api:
    """One admin-API session; every failure becomes a :class:`CliError` with one line."""

    def __init__(self, url: str, key: str) -> None:
        if not key:
            fail("no admin key: pass --admin-key or set FLAGWIRE_ADMIN_KEY")
        self.url = url.rstrip("/")
        self.client = httpx.Client(
            base_url=self.url + "/api/v1", timeout=40.0, headers={"Authorization": f"Bearer {key}"}
        )
        opened = _opened.get()
        if opened is not None:
            opened.append(self)

    def close(self) -> None:
        """Close the session's connections."""
        self.client.close()

    def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        try:
            content = orjson.dumps(body) if body is not None else None
        except TypeError as exc:  # e.g. a YAML mapping with a non-string key
            fail(f"the document cannot be sent as JSON: {exc}")
        hdrs = {"Content-Type": "application/json", **(headers or {})} if content else headers
        try:
            resp = self.client.request(
                method,
                path,
                content=content,
                headers=hdrs,
                params={k: v for k, v in (params or {}).items() if v is not None},
            )
        except httpx.HTTPError as exc:
            fail(f"cannot reach {self.url}: {exc}")
        if resp.status_code == 204:
            return None
        try:
            data = resp.json()
        except ValueError:
            data = None
        if resp.is_error:
            fail(problem_line(resp.status_code, data, resp.text))
        return data


def problem_line(status: int, data: Any, text: str) -> str:
    """A problem+json answer as one line: status, title, detail, the first field errors."""
    if not isinstance(data, dict):
        return f"{status}: {text.strip()[:200]}"
    line = f"{status} {data.get('title', '')}: {data.get('detail', '')}"
    errors = data.get("errors") or []
    if errors:
        line += " — " + "; ".join(
            f"{e.get('path') or '(document)'}: {e.get('message')}" for e in errors[:5]
        )
    if "current_version" in data:
        line += f" (current version {data['current_version']})"
    return line
