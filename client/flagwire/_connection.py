"""The subscription's I/O loop: connect, feed frames to the state machine, reconnect.

Thin by design: everything about *what* a message means lives in
:mod:`flagwire.core.subscription`, everything about *when* to try again in
:mod:`flagwire._backoff`.  This module moves bytes and translates the
errors of ``websockets`` and the OS into :func:`~flagwire._backoff.classify`
inputs at the boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Protocol
from urllib.parse import urlencode, urlsplit, urlunsplit

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.proxy import get_proxy
from websockets.uri import parse_uri

from flagwire._backoff import (
    Action,
    Backoff,
    Closed,
    Refused,
    classify,
    pace_of,
    parse_retry_after,
    retry_hint,
)
from flagwire._insight import FOLD_INTERVAL, InsightRecorder
from flagwire.core import protocol as proto
from flagwire.core.errors import AuthenticationError, ClientError, ProtocolError, RefusedError
from flagwire.core.limits import MAX_SERVER_FRAME, STREAM_PATH
from flagwire.core.subscription import Outcome, StreamState

__all__ = ["Listener", "Subscription", "proxy_for", "stream_url"]

#: At most one ack per this many seconds (the server allows 50 client messages/s).
ACK_INTERVAL = 0.05


def stream_url(base: str, query: Mapping[str, str] | None = None) -> str:
    """The WebSocket URL of the stream endpoint for a server URL.

    ``http``/``https`` become ``ws``/``wss``; a bare host gets ``/api/v1/stream``.

    Raises:
        ClientError: the URL has an unsupported scheme.
    """
    parts = urlsplit(base)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ClientError(f"expected an http(s):// or ws(s):// server URL, got {base!r}")
    path = parts.path.rstrip("/")
    if not path.endswith(STREAM_PATH):
        path += STREAM_PATH
    return urlunsplit((scheme, parts.netloc, path, urlencode(dict(query or {})), ""))


def proxy_for(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``HTTPS_PROXY``, ``NO_PROXY``…), or None.

    Looked up once per client: websockets would otherwise read the whole
    environment on every connect, about 60% of the CPU of a refused attempt,
    paid thousands of times a second by a fleet retrying through an outage.
    """
    return get_proxy(parse_uri(stream_url(url)))


def _problem(body: bytes | bytearray) -> tuple[str, str]:
    """``(detail, code)`` of an RFC 9457 problem body; else the start of the body and ""."""
    try:
        problem = orjson.loads(body)
    except orjson.JSONDecodeError:
        problem = None
    if isinstance(problem, dict):
        detail = problem.get("detail") or problem.get("title")
        code = problem.get("code")
        if isinstance(detail, str) and detail:
            return detail[:300], code[:64] if isinstance(code, str) else ""
    return body[:300].decode("utf-8", "replace").strip(), ""


def refusal_error(event: Closed | Refused | BaseException, why: str) -> RefusedError:
    """The typed error for a refusal that ends the subscription, carrying the server's reason."""
    if isinstance(event, RefusedError):
        return event
    if isinstance(event, Refused):
        cls = AuthenticationError if event.status in (401, 403) else RefusedError
        return cls(why, status=event.status, code=event.code, detail=event.detail)
    if isinstance(event, Closed):
        return AuthenticationError(why, detail=event.reason)
    return RefusedError(why)


class Listener(Protocol):
    """What the subscription tells the client (all called on the client's loop)."""

    def connection_opened(self) -> None: ...
    def outcome(self, out: Outcome) -> None: ...
    def connection_lost(self, why: str) -> None: ...
    def refused(self, error: RefusedError) -> None: ...


def _describe(event: BaseException | Closed | Refused) -> str:
    if isinstance(event, Closed):
        if event.code is None:
            return "the connection was lost" + (f" ({event.reason})" if event.reason else "")
        return f"the server closed the connection ({event.code} {event.reason})".rstrip()
    if isinstance(event, Refused):
        text = f"the server answered the handshake with HTTP {event.status}"
        return f"{text}: {event.detail}" if event.detail else text
    text = str(event) or type(event).__name__
    return f"{type(event).__name__}: {text}" if not isinstance(event, ProtocolError) else text


class Subscription:
    """Keeps one WebSocket subscription alive until cancelled or refused.

    Args:
        url: the server's base URL.
        sdk_key: the SDK key, sent as ``Authorization: Bearer``.
        state: the sans-I/O state machine (shared with the client).
        listener: told about connections, outcomes and refusals.
        backoff: the reconnect schedule.
        heartbeat_timeout: a connection with no pong within this many seconds
            is considered dead.
        open_timeout: limit on the TCP + TLS + HTTP handshake.
        logger: where to report.
        insight: what to report for fleet insight (None: nothing).
        report_interval: seconds between summaries.
    """

    def __init__(
        self,
        url: str,
        sdk_key: str,
        state: StreamState,
        listener: Listener,
        *,
        backoff: Backoff,
        heartbeat_timeout: float,
        open_timeout: float,
        logger: logging.Logger,
        user_agent: str,
        insight: InsightRecorder | None = None,
        report_interval: float = 10.0,
    ) -> None:
        stream_url(url)  # fail fast on a bad URL
        self.url = url
        self._proxy = proxy_for(url)
        self._headers = {"Authorization": f"Bearer {sdk_key}"}
        self.state = state
        self.listener = listener
        self.backoff = backoff
        self.heartbeat_timeout = heartbeat_timeout
        self.open_timeout = open_timeout
        self.logger = logger
        self.user_agent = user_agent
        self.attempts = 0  #: connection attempts so far
        self.connections = 0  #: connections that completed the handshake
        self.snapshots = 0  #: snapshots received
        self.changes = 0  #: patches and deletes received
        self.resyncs = 0  #: resyncs asked for (gaps)
        self.malformed = 0  #: malformed messages received
        self.attempt_started = 0.0  #: ``time.monotonic()`` when the last attempt began
        self.last_error: str | None = None
        self._ws: ClientConnection | None = None
        self._was_open = False
        self._outage_started: float | None = None  # monotonic; None while current
        self._ack_version = 0
        self._ack_last = 0.0  # time.monotonic() of the last ack sent on this connection
        self._ack_task: asyncio.Task[None] | None = None
        self.insight = insight
        self.report_interval = report_interval
        self._report_task: asyncio.Task[None] | None = None
        self.summaries = 0  #: summaries sent

    async def run(self) -> None:
        """Connect, serve, back off, repeat; returns only when the server refuses for good."""
        while True:
            self._was_open = False
            event = await self._attempt()
            if self._outage_started is None:  # current data until now: the outage starts
                self._outage_started = time.monotonic()
            action = classify(event)
            why = _describe(event)
            self.last_error = why
            if self._was_open:
                self.listener.connection_lost(why)
            if action is Action.GIVE_UP:
                key = not isinstance(event, Refused) or event.status in (401, 403)
                what = "the SDK key" if key else "the stream"
                why = f"the server refused {what} ({why}); not retrying"
                self.last_error = why
                self.logger.error("flagwire: %s", why)
                self.listener.refused(refusal_error(event, why))
                return
            if action is Action.RESYNC:
                self.state.request_snapshot()
            hint = retry_hint(event)
            if action is Action.SOON and hint is None:
                delay = self.backoff.going_away_delay()
            else:  # a server's own hint wins, also over "going away"
                delay = self.backoff.delay(
                    pace_of(event),
                    outage=time.monotonic() - self._outage_started,
                    retry_after=hint,
                )
            self.logger.info("flagwire: %s; reconnecting in %.2fs", why, delay)
            await asyncio.sleep(delay)

    async def _attempt(self) -> BaseException | Closed | Refused:
        self.attempts += 1
        self.attempt_started = time.monotonic()
        uri = stream_url(self.url, self.state.resume_query())
        hb = self.heartbeat_timeout
        try:
            async with connect(
                uri,
                additional_headers=self._headers,
                user_agent_header=self.user_agent,
                compression=None,
                proxy=self._proxy,
                max_size=MAX_SERVER_FRAME,
                max_queue=64,
                open_timeout=self.open_timeout,
                # A ping every hb/3, hb/3 to answer, hb/3 to tear down: a dead
                # connection is noticed within heartbeat_timeout.
                ping_interval=hb / 3,
                ping_timeout=hb / 3,
                close_timeout=min(hb / 3, 5.0),
            ) as ws:
                self.connections += 1
                self._was_open = True
                opened = time.monotonic()
                self._ws = ws
                try:
                    return await self._serve(ws)
                finally:
                    self._ws = None
                    self.backoff.connected_for(time.monotonic() - opened)
        except InvalidStatus as exc:
            response = exc.response
            detail, code = _problem(response.body or b"")
            retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
            return Refused(response.status_code, detail, code, retry_after)
        except (OSError, TimeoutError, WebSocketException, ProtocolError) as exc:
            return exc

    async def _serve(self, ws: ClientConnection) -> Closed | ProtocolError:
        self.state.connection_opened()
        self.listener.connection_opened()
        self._ack_last = 0.0
        if self.insight is not None:
            # A server that refuses at once (close 4001) must be read as a refusal by _read,
            # not surface here as a send on a closed connection.
            with contextlib.suppress(ConnectionClosed):
                await ws.send(proto.encode(self.insight.identity), text=True)
            self._report_task = asyncio.create_task(self._report_loop(ws), name="flagwire-report")
        try:
            return await self._read(ws)
        finally:
            for name in ("_ack_task", "_report_task"):
                task = getattr(self, name)
                setattr(self, name, None)
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    async def _report_loop(self, ws: ClientConnection) -> None:
        insight = self.insight
        assert insight is not None
        due = time.monotonic() + self.report_interval
        # Fold often while evaluations arrive, seldom while idle: a thousand idle
        # clients in one process must not wake twenty thousand times a second.
        delay = FOLD_INTERVAL
        while True:
            await asyncio.sleep(max(0.0, min(delay, due - time.monotonic())))
            try:
                delay = FOLD_INTERVAL if insight.fold() else min(2 * delay, self.report_interval)
                if time.monotonic() >= due:
                    due += self.report_interval
                    await self.report(ws)
            except Exception:  # reporting must never take the subscription down
                self.logger.exception("flagwire: could not send the insight summary")

    async def report(self, ws: ClientConnection | None = None) -> None:
        """Send what was counted since the last summary (dropped when not connected)."""
        ws = ws or self._ws
        if self.insight is None or ws is None:
            return
        for summary in self.insight.drain(int(time.time() * 1000)):
            with contextlib.suppress(ConnectionClosed):
                await ws.send(proto.encode(summary), text=True)
                self.summaries += 1

    async def _read(self, ws: ClientConnection) -> Closed | ProtocolError:
        state = self.state
        try:
            while True:
                raw = await ws.recv(decode=False)
                try:
                    msg = proto.decode(raw, max_size=MAX_SERVER_FRAME)
                    if isinstance(msg, proto.Watch):
                        if self.insight is not None:
                            self.insight.watch(msg.flags)
                        continue
                    if isinstance(msg, proto.SnapshotMessage):
                        self.snapshots += 1
                    elif isinstance(msg, proto.Patch | proto.Delete):
                        self.changes += 1
                    out = state.receive(msg)
                    if out.caught_up:
                        # The server answers and we are current: a restart that
                        # follows starts a new outage with the short schedule.
                        self.backoff.current()
                        self._outage_started = None
                except ProtocolError as exc:
                    self.malformed += 1
                    self.logger.error(
                        "flagwire: malformed message from the server: %s; "
                        "reconnecting for a fresh snapshot",
                        exc,
                    )
                    await ws.close(proto.CloseCode.BAD_MESSAGE, "bad message")
                    return exc
                if out.error is not None:
                    self.logger.warning(
                        "flagwire: the server reported %s: %s", out.error.code, out.error.message
                    )
                if out.gap is not None:
                    self.logger.warning(
                        "flagwire: missed changes (%s); asking for a resync", out.gap
                    )
                if out.rewound is not None:
                    self.logger.warning("flagwire: %s", out.rewound)
                self.listener.outcome(out)
                if out.resync:
                    self.resyncs += 1
                    await ws.send(proto.encode(proto.Resync()), text=True)
                if out.ack is not None:
                    await self._ack(ws, out.ack)
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            if rcvd is None:
                sent = exc.sent
                return Closed(None, sent.reason if sent is not None else "")
            return Closed(rcvd.code, rcvd.reason)

    async def _ack(self, ws: ClientConnection, version: int) -> None:
        """Acknowledge ``version``: at once, or coalesced with the next ones in a burst.

        An ack covers every version up to it, so during a replay of hundreds
        of changes one ack per ``ACK_INTERVAL`` says what one per change would,
        and stays well inside the server's per-client message rate.
        """
        self._ack_version = version
        if self._ack_task is not None:
            return  # the scheduled ack will carry this version
        wait = self._ack_last + ACK_INTERVAL - time.monotonic()
        if wait <= 0:
            self._ack_last = time.monotonic()
            await ws.send(proto.encode(proto.Ack(version)), text=True)
        else:
            self._ack_task = asyncio.create_task(self._ack_later(ws, wait), name="flagwire-ack")

    async def _ack_later(self, ws: ClientConnection, wait: float) -> None:
        await asyncio.sleep(wait)
        self._ack_task = None
        self._ack_last = time.monotonic()
        with contextlib.suppress(ConnectionClosed):
            await ws.send(proto.encode(proto.Ack(self._ack_version)), text=True)

    async def close(self) -> None:
        """Close the current connection politely, if there is one."""
        ws = self._ws
        if ws is not None:
            await ws.close()
