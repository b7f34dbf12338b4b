"""What every fault scenario asserts at its end (issue 6, "Fault suite").

Pieces:

* :class:`Admin` — the admin REST API over ``httpx`` (async, so it never
  stalls the clients sharing the test's event loop), recording every write
  attempt and what the API answered (:class:`Write`).
* :class:`Watched` — one observed client: a real :class:`flagwire.FlagClient`
  (:func:`watch_client`, which records every message the client's state
  machine took and what it applied) or a :class:`RawSubscriber`, a lean
  protocol subscriber of our own (reconnects with jittered backoff, resumes
  with ``since``, acks), used where hundreds or thousands of clients are needed.
* :class:`ReadyMonitor` — samples, every few tens of milliseconds, Redis's
  version of each environment and every client's status and version; a
  client that says READY while it is behind for longer than its timeout is
  a violation.
* :func:`check_invariants` — waits for convergence, then asserts:

  1. every client's cache (flags, segments, version) equals Redis for its
     environment (read through the documented key layout, ``docs/design.md``);
  2. each client's applied versions only increased; a patch/delete was only
     applied on top of the version before it; any jump was a snapshot; every
     gap the client saw was followed by a snapshot;
  3. no change acknowledged by the API (2xx with ``env_version``) is missing:
     Redis's change log holds it, Redis's document is the last acknowledged
     one, and every client is at or past it;
  4. deleted flags stay deleted: no client ever held a deleted flag at a
     version at or after its deletion (until an acknowledged re-creation);
  5. no client was READY while behind by more than its timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
import redis.asyncio as aioredis
import websockets

from flagwire import ClientStatus, FlagClient
from flagwire.core.limits import MAX_SERVER_FRAME
from flagwire.core.protocol import (
    Ack,
    Delete,
    Hello,
    Patch,
    Resync,
    SnapshotMessage,
    decode,
    encode,
)
from tests.support.polling import poll

__all__ = [
    "Admin",
    "Applied",
    "RawSubscriber",
    "ReadyMonitor",
    "RedisView",
    "Watched",
    "Write",
    "check_invariants",
    "poll",
    "wait_converged",
    "watch_client",
]


# --- Redis, read through the documented layout ---------------------------------------


class RedisView:
    """Reads an environment as Redis holds it (``docs/design.md``, Storage)."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url, self.prefix = url, prefix
        self.r = aioredis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=2)

    def key(self, env: str, suffix: str) -> str:
        return f"{self.prefix}:{{{env}}}:{suffix}"

    async def version(self, env: str) -> int:
        raw = await self.r.hget(self.key(env, "meta"), "version")
        return int(raw or 0)

    async def epoch(self, env: str) -> str:
        raw = await self.r.hget(self.key(env, "meta"), "epoch")
        return raw.decode() if raw else ""

    async def docs(self, env: str, kind: str = "flags") -> dict[str, dict[str, Any]]:
        raw = await self.r.hgetall(self.key(env, kind))
        return {k.decode(): orjson.loads(v) for k, v in raw.items()}

    async def state(self, env: str) -> tuple[int, dict[str, Any], dict[str, Any]]:
        """``(version, flags, segments)`` read atomically."""
        pipe = self.r.pipeline(transaction=True)
        pipe.hget(self.key(env, "meta"), "version")
        pipe.hgetall(self.key(env, "flags"))
        pipe.hgetall(self.key(env, "segments"))
        v, f, s = await pipe.execute()
        dec = lambda m: {k.decode(): orjson.loads(x) for k, x in m.items()}  # noqa: E731
        return int(v or 0), dec(f), dec(s)

    async def change(self, env: str, version: int) -> dict[str, Any] | None:
        """The change-log entry ``<version>-0`` decoded, or None."""
        got = await self.r.xrange(self.key(env, "changes"), min=f"{version}-0", max=f"{version}-0")
        if not got:
            return None
        fields = {k.decode(): v for k, v in got[0][1].items()}
        return orjson.loads(fields["m"])

    async def aclose(self) -> None:
        await self.r.aclose()


# --- the admin API, recording every write ---------------------------------------------


@dataclass
class Write:
    """One write attempt and the API's answer."""

    env: str
    key: str
    op: str  # put | patch | delete
    status: int  # 0: no HTTP answer (timeout, refused connection)
    env_version: int | None = None
    flag_version: int | None = None
    doc: dict[str, Any] | None = None  # the document the API says it stored
    body: Any = None
    error: str = ""
    seconds: float = 0.0
    content_type: str = ""

    @property
    def acked(self) -> bool:
        return 200 <= self.status < 300 and self.env_version is not None

    def answered(self, resp: httpx.Response) -> None:
        self.status = resp.status_code
        self.content_type = resp.headers.get("content-type", "")
        try:
            self.body = resp.json()
        except ValueError:
            self.body = resp.text
        if 200 <= resp.status_code < 300 and isinstance(self.body, dict):
            self.env_version = self.body.get("env_version")
            self.flag_version = self.body.get("version")
            self.doc = self.body.get("flag")


class Admin:
    """The admin REST API of one or more servers (round-robin over ``urls``)."""

    def __init__(self, urls: str | Sequence[str], admin_key: str, timeout: float = 5.0) -> None:
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        self.key = admin_key
        self.http = httpx.AsyncClient(
            timeout=timeout, headers={"Authorization": f"Bearer {admin_key}"}
        )
        self.writes: list[Write] = []
        self.background: list[Any] = []  # writers using this API; stopped by aclose()
        self._next = 0

    def _url(self, url: str | None) -> str:
        if url is not None:
            return url
        url = self.urls[self._next % len(self.urls)]
        self._next += 1
        return url

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        url: str | None = None,
        key: str | None = None,
        http_timeout: float | None = None,
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key is not None else None
        kwargs: dict[str, Any] = {"headers": headers}
        if body is not None:
            kwargs["json"] = body
        if http_timeout is not None:
            kwargs["timeout"] = http_timeout
        return await self.http.request(method, self._url(url) + "/api/v1" + path, **kwargs)

    async def _write(
        self,
        env: str,
        key: str,
        op: str,
        method: str,
        path: str,
        body: Any,
        url: str | None,
        http_timeout: float | None,
    ) -> Write:
        w = Write(env, key, op, 0)
        started = time.monotonic()
        try:
            resp = await self.request(method, path, body, url=url, http_timeout=http_timeout)
        except httpx.HTTPError as exc:
            w.error = f"{type(exc).__name__}: {exc}"
        except asyncio.CancelledError:
            w.error = "cancelled"  # it may have landed: recorded as an unanswered write
            w.seconds = time.monotonic() - started
            self.writes.append(w)
            raise
        else:
            w.answered(resp)
        w.seconds = time.monotonic() - started
        self.writes.append(w)
        return w

    def put_flags_blocking(self, env: str, docs: list[dict[str, Any]]) -> list[Write]:
        """PUT flags one after the other with a blocking client (run it in a thread when this
        event loop is too busy to be responsive); the writes are recorded like the others."""
        out = []
        with httpx.Client(timeout=10, headers={"Authorization": f"Bearer {self.key}"}) as http:
            for doc in docs:
                w = Write(env, doc["key"], "put", 0)
                started = time.monotonic()
                try:
                    resp = http.put(
                        f"{self._url(None)}/api/v1/environments/{env}/flags/{doc['key']}", json=doc
                    )
                except httpx.HTTPError as exc:
                    w.error = f"{type(exc).__name__}: {exc}"
                else:
                    w.answered(resp)
                w.seconds = time.monotonic() - started
                out.append(w)
        self.writes.extend(out)
        return out

    async def put_flag(
        self,
        env: str,
        doc: dict[str, Any],
        *,
        url: str | None = None,
        http_timeout: float | None = None,
    ) -> Write:
        return await self._write(
            env,
            doc["key"],
            "put",
            "PUT",
            f"/environments/{env}/flags/{doc['key']}",
            doc,
            url,
            http_timeout,
        )

    async def patch_flag(
        self,
        env: str,
        key: str,
        patch: dict[str, Any],
        *,
        url: str | None = None,
        http_timeout: float | None = None,
    ) -> Write:
        return await self._write(
            env, key, "patch", "PATCH", f"/environments/{env}/flags/{key}", patch, url, http_timeout
        )

    async def delete_flag(
        self, env: str, key: str, *, url: str | None = None, http_timeout: float | None = None
    ) -> Write:
        return await self._write(
            env,
            key,
            "delete",
            "DELETE",
            f"/environments/{env}/flags/{key}",
            None,
            url,
            http_timeout,
        )

    async def create_key(
        self, kind: str = "sdk", env: str | None = "production", name: str = "fault test key"
    ) -> tuple[str, str]:
        """Create a key; returns ``(id, secret)``."""
        body: dict[str, Any] = {"name": name, "kind": kind}
        if env is not None:
            body["env"] = env
        resp = await self.request("POST", "/keys", body)
        assert resp.status_code == 201, f"POST /keys -> {resp.status_code}: {resp.text[:300]}"
        data = resp.json()
        return str(data["key"]["id"]), str(data["secret"])

    async def create_env(self, env: str) -> None:
        resp = await self.request("POST", "/environments", {"key": env, "name": env})
        assert resp.status_code in (200, 201), resp.text[:300]

    async def aclose(self) -> None:
        for writer in self.background:
            await writer.stop()
        await self.http.aclose()


async def wait_key_known(ws_urls: Iterable[str], secret: str, within: float = 10.0) -> None:
    """Wait until every server accepts ``secret`` at the stream handshake (key rings poll)."""
    for ws_url in ws_urls:

        async def known(ws_url: str = ws_url) -> bool:
            try:
                ws = await websockets.connect(
                    ws_url,
                    additional_headers={"Authorization": f"Bearer {secret}"},
                    compression=None,
                    open_timeout=3,
                    max_size=MAX_SERVER_FRAME,
                )
            except (websockets.InvalidStatus, OSError, TimeoutError):
                return False
            await ws.close()
            return True

        await poll(known, within, f"{ws_url} to accept the new key", 0.05)


# --- observed clients --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Applied:
    """One message a client took: what it was and the version the client held after."""

    t: float
    type: str  # hello | snapshot | patch | delete | error
    msg_version: int | None
    held: int | None  # the client's version after the message
    epoch: str
    flags: Any = None  # the flag keys held after (a mapping or a set), for "stays deleted"


class Watched:
    """A client under observation (see :func:`watch_client` and :class:`RawSubscriber`)."""

    def __init__(self, name: str, env: str, timeout: float) -> None:
        self.name, self.env, self.timeout = name, env, timeout
        self.events: list[Applied] = []
        self.gaps: list[tuple[float, str]] = []

    # Subclasses provide these.
    @property
    def version(self) -> int | None:
        raise NotImplementedError

    @property
    def ready(self) -> bool:
        raise NotImplementedError

    def cache(self) -> tuple[dict[str, Any], dict[str, Any]]:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class WatchedClient(Watched):
    def __init__(self, client: FlagClient, name: str, env: str) -> None:
        super().__init__(name, env, client.heartbeat_timeout)
        self.client = client
        self.statuses: list[tuple[float, ClientStatus]] = []
        client.on_status(lambda s: self.statuses.append((time.monotonic(), s)))
        # The client offers on_change/on_status, which do not say whether a version
        # came from a patch or a snapshot, nor report gaps; so we wrap the entry
        # point of its sans-I/O state machine and record every message it took.
        state = client._state
        receive = state.receive

        def recording_receive(msg: Any) -> Any:
            out = receive(msg)
            snap = state.snapshot
            self.events.append(
                Applied(
                    time.monotonic(),
                    msg.type,
                    getattr(msg, "version", None),
                    snap.version if snap is not None else None,
                    snap.epoch if snap is not None else "",
                    flags=snap.flags if snap is not None else None,
                )
            )
            if out.gap is not None:
                self.gaps.append((time.monotonic(), out.gap))
            return out

        state.receive = recording_receive  # type: ignore[method-assign]

    @property
    def version(self) -> int | None:
        return self.client.version

    @property
    def ready(self) -> bool:
        return self.client.status is ClientStatus.READY

    def cache(self) -> tuple[dict[str, Any], dict[str, Any]]:
        snap = self.client.snapshot
        if snap is None:
            return {}, {}
        return (
            {k: dict(v) for k, v in snap.flags.items()},
            {k: dict(v) for k, v in snap.segments.items()},
        )

    async def close(self) -> None:
        await self.client.close()


def watch_client(client: FlagClient, name: str, env: str = "production") -> WatchedClient:
    """Observe a FlagClient (call before ``start``)."""
    return WatchedClient(client, name, env)


class RawSubscriber(Watched):
    """A lean protocol subscriber: connect, apply, ack, reconnect with full jitter, resume.

    Args:
        ws_url: the stream endpoint.
        key: the SDK key.
        timeout: with ``keepalive``, a connection whose ping is not answered
            within it is considered dead (pings every ``timeout / 3``, as the
            FlagClient does); also the READY-while-behind bound.
        keepalive: False sends no pings (thousands of lean clients); the
            server's pings are still answered.
        backoff: ceiling of the first reconnect delay (full jitter), doubling to 2 s.
        read: False makes a client that never reads (a slow consumer).
    """

    def __init__(
        self,
        ws_url: str,
        key: str,
        name: str = "raw",
        *,
        env: str = "production",
        timeout: float = 5.0,
        keepalive: bool = True,
        backoff: float = 0.5,
        reconnect: bool = True,
        ack: bool = True,
        query: dict[str, str] | None = None,
    ) -> None:
        super().__init__(name, env, timeout)
        self.keepalive = keepalive
        self.ws_url, self.key = ws_url, key
        self.backoff, self.reconnect, self.ack = backoff, reconnect, ack
        self.query = dict(query or {})
        self._version: int | None = None
        self.epoch = ""
        self.flags: dict[str, Any] = {}
        self.segments: dict[str, Any] = {}
        self.hello: Hello | None = None
        self.connected = False
        self.connects: list[float] = []  # monotonic time of each completed handshake
        self.closes: list[tuple[float, int | None, str]] = []
        self.errors: list[str] = []
        self.ws: Any = None
        self._need_snapshot = True
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.first = asyncio.Event()  # set at the first completed handshake

    @property
    def version(self) -> int | None:
        return self._version

    @property
    def ready(self) -> bool:
        return (
            self.connected
            and self.hello is not None
            and self._version is not None
            and not self._need_snapshot
            and self._version >= self.hello.version
        )

    def cache(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return dict(self.flags), dict(self.segments)

    def start(self) -> RawSubscriber:
        self._task = asyncio.create_task(self._run(), name=f"raw-{self.name}")
        return self

    def _url(self) -> str:
        query = dict(self.query)
        if self._version is not None and not self._need_snapshot and self.epoch:
            query.update(since=str(self._version), epoch=self.epoch)
        return self.ws_url + ("?" + urlencode(query) if query else "")

    async def _run(self) -> None:
        failures = 0
        while not self._closing:
            try:
                async with websockets.connect(
                    self._url(),
                    additional_headers={"Authorization": f"Bearer {self.key}"},
                    compression=None,
                    max_size=MAX_SERVER_FRAME,
                    open_timeout=10,
                    ping_interval=self.timeout / 3 if self.keepalive else None,
                    ping_timeout=self.timeout / 3,
                    close_timeout=2,
                ) as ws:
                    self.ws = ws
                    self.connects.append(time.monotonic())
                    self.first.set()
                    failures = 0
                    await self._serve(ws)
            except websockets.ConnectionClosed as exc:
                rcvd = exc.rcvd
                self.closes.append(
                    (time.monotonic(), rcvd.code if rcvd else None, rcvd.reason if rcvd else "")
                )
                if rcvd is not None and rcvd.code in (4000, 4002, 1009):
                    self._need_snapshot = True
            except (OSError, TimeoutError, websockets.WebSocketException) as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
                if isinstance(exc, websockets.InvalidStatus) and exc.response.status_code in (
                    401,
                    403,
                ):
                    return
            finally:
                self.connected = False
                self.ws = None
            if not self.reconnect or self._closing:
                return
            ceiling = min(2.0, self.backoff * (2 ** min(failures, 8)))
            failures += 1
            await asyncio.sleep(random.uniform(0, ceiling))

    async def _serve(self, ws: Any) -> None:
        self.hello = None
        while True:
            msg = decode(await ws.recv(decode=False))
            now = time.monotonic()
            if isinstance(msg, Hello):
                self.hello = msg
                self.connected = True
                if self._version is None or msg.epoch != self.epoch or msg.version < self._version:
                    self._need_snapshot = True
                self.events.append(Applied(now, "hello", msg.version, self._version, self.epoch))
                continue
            if isinstance(msg, SnapshotMessage):
                self.flags, self.segments = dict(msg.flags), dict(msg.segments)
                self._version, self.epoch = msg.version, msg.epoch
                self._need_snapshot = False
            elif isinstance(msg, Patch | Delete):
                if self._need_snapshot or self._version is None:
                    self.gaps.append((now, f"{msg.type} {msg.version} before a snapshot"))
                    continue
                if msg.version <= self._version:
                    continue
                if msg.version != self._version + 1:
                    self.gaps.append((now, f"{msg.type} {msg.version} after {self._version}"))
                    self._need_snapshot = True
                    await ws.send(encode(Resync()))
                    continue
                target = self.flags if msg.kind == "flag" else self.segments
                if isinstance(msg, Patch):
                    target[msg.key] = msg.data
                else:
                    target.pop(msg.key, None)
                self._version = msg.version
            else:
                continue
            self.events.append(
                Applied(
                    now,
                    msg.type,
                    msg.version,
                    self._version,
                    self.epoch,
                    flags=frozenset(self.flags),
                )
            )
            if self.ack:
                await ws.send(encode(Ack(self._version)))

    async def close(self, *, graceful: bool = True) -> None:
        """Stop; ``graceful=False`` drops the TCP connection without a closing handshake."""
        self._closing = True
        ws = self.ws
        if ws is not None and not graceful:
            ws.transport.abort()
        elif ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 3)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


# --- READY while behind --------------------------------------------------------------


class ReadyMonitor:
    """Samples Redis's versions and every client's (ready, version) pair.

    A client that is READY with a version below the one Redis had *before*
    the client was sampled is behind; a continuous stretch of that longer
    than the client's timeout (plus ``slack`` for scheduling) is a violation.
    While Redis cannot be read nothing is sampled (nothing can be written then).
    """

    def __init__(
        self, view: RedisView, watched: list[Watched], interval: float = 0.05, slack: float = 1.0
    ) -> None:
        self.view, self.watched = view, watched
        self.interval, self.slack = interval, slack
        self.behind_since: dict[int, float] = {}
        self.worst: dict[str, float] = {}
        self.breaches: dict[str, str] = {}
        self.samples = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> ReadyMonitor:
        self._task = asyncio.create_task(self._run(), name="ready-monitor")
        return self

    async def _run(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.interval)
            envs = {w.env for w in self.watched}
            try:
                versions = {env: await self.view.version(env) for env in envs}
            except Exception:
                continue
            now = time.monotonic()
            self.samples += 1
            for w in list(self.watched):
                v = w.version
                if w.ready and v is not None and v < versions[w.env]:
                    since = self.behind_since.setdefault(id(w), now)
                    lag = now - since
                    if lag > w.timeout + self.slack and lag > self.worst.get(w.name, 0.0):
                        self.breaches[w.name] = (
                            f"{w.name} READY at version {v} while Redis had {versions[w.env]}: "
                            f"behind and READY for {lag:.1f}s (timeout {w.timeout}s)"
                        )
                    self.worst[w.name] = max(self.worst.get(w.name, 0.0), lag)
                else:
                    self.behind_since.pop(id(w), None)

    @property
    def violations(self) -> list[str]:
        """One line per client that was READY and behind for longer than its timeout."""
        return list(self.breaches.values())

    async def stop(self) -> None:
        """Stop sampling; the loop also ends by its flag, not by cancellation alone.

        On Python 3.11, ``asyncio.wait_for`` returns the inner result and drops a
        cancellation that arrives as the inner call completes; redis-py sends
        every command through ``wait_for`` when a socket timeout is set, so a
        ``cancel()`` landing there was lost and ``await self._task`` waited for
        a ``while True`` loop that never ended (issue 10, item 13: the partition
        test hanging to its timeout).
        """
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


# --- the checks ------------------------------------------------------------------------


async def wait_converged(view: RedisView, watched: Sequence[Watched], within: float) -> None:
    """Wait until every client holds Redis's version of its environment."""

    async def done() -> bool:
        versions: dict[str, int] = {}
        for w in watched:
            if w.env not in versions:
                versions[w.env] = await view.version(w.env)
            if w.version != versions[w.env]:
                return False
        return True

    async def behind() -> str:
        out = []
        for w in watched:
            rv = await view.version(w.env)
            if w.version != rv:
                out.append(f"{w.name}@{w.version} (redis {rv}, ready={w.ready})")
        return ", ".join(out[:10]) + (f" ... {len(out)} in all" if len(out) > 10 else "")

    try:
        await poll(done, within, "every client to reach Redis's version", 0.05)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: behind: {await behind()}") from None


def _applied_problems(w: Watched, *, allow_rewind: bool) -> list[str]:
    """Invariant 2 for one client."""
    problems: list[str] = []
    held: int | None = None
    epoch = ""
    gaps = sorted(t for t, _ in w.gaps)
    snaps = [e.t for e in w.events if e.type == "snapshot"]
    for e in w.events:
        if e.type in ("hello", "error") or e.held is None:
            continue
        if e.type in ("patch", "delete") and held is not None and e.held not in (held, held + 1):
            problems.append(f"{w.name}: {e.type} moved the version from {held} to {e.held}")
        rewind_ok = allow_rewind and e.type == "snapshot" and e.epoch != epoch
        if held is not None and e.held < held and not rewind_ok:
            problems.append(f"{w.name}: version went back from {held} to {e.held} ({e.type})")
        held, epoch = e.held, e.epoch
    for t in gaps:
        if not any(s > t for s in snaps):
            problems.append(f"{w.name}: a gap at {t:.3f} was never followed by a snapshot")
    return problems


async def check_invariants(
    view: RedisView,
    watched: Sequence[Watched],
    writes: Sequence[Write],
    monitor: ReadyMonitor | None = None,
    *,
    converge_timeout: float = 20.0,
    allow_rewind: bool = False,
) -> None:
    """Assert the five invariants of the module docstring (AssertionError lists every breach)."""
    try:
        await wait_converged(view, watched, converge_timeout)
    except AssertionError as exc:
        extra = monitor.violations if monitor is not None else []
        raise AssertionError("invariants broken:\n  " + "\n  ".join([str(exc), *extra])) from None
    finally:
        if monitor is not None:
            await monitor.stop()
    problems: list[str] = []
    envs = sorted({w.env for w in watched} | {w.env for w in writes})
    state = {env: await view.state(env) for env in envs}

    # 1. cache == Redis
    for w in watched:
        version, flags, segments = state[w.env]
        c_flags, c_segments = w.cache()
        if w.version != version:
            problems.append(f"{w.name}: version {w.version}, Redis {version}")
        if c_flags != flags:
            diff = sorted(
                k for k in flags.keys() | c_flags.keys() if flags.get(k) != c_flags.get(k)
            )
            problems.append(f"{w.name}: flags differ from Redis on {diff[:10]}")
        if c_segments != segments:
            problems.append(f"{w.name}: segments differ from Redis")

    # 2. applied versions only increased; gaps were followed by a snapshot
    for w in watched:
        problems.extend(_applied_problems(w, allow_rewind=allow_rewind))

    # 3. acknowledged changes are all there
    acked = sorted((w for w in writes if w.acked), key=lambda w: (w.env, w.env_version or 0))
    last: dict[tuple[str, str], Write] = {}
    uncertain = {
        (w.env, w.key) for w in writes if not w.acked and w.status in (0, 500, 502, 503, 504)
    }
    for w in acked:
        assert w.env_version is not None
        entry = await view.change(w.env, w.env_version)
        if entry is None:
            problems.append(
                f"acknowledged change {w.env}@{w.env_version} ({w.op} {w.key}) "
                "is not in Redis's change log"
            )
        elif entry.get("key") != w.key:
            problems.append(
                f"change log entry {w.env}@{w.env_version} is for "
                f"{entry.get('key')!r}, the API acknowledged {w.key!r}"
            )
        version = state[w.env][0]
        if w.env_version > version:
            problems.append(
                f"acknowledged {w.env}@{w.env_version} is past Redis's version {version}"
            )
        last[(w.env, w.key)] = w
    for (env, key), w in last.items():
        if (env, key) in uncertain:
            continue  # a write the API did not answer may or may not have landed after it
        doc = state[env][1].get(key)
        if w.op == "delete":
            if doc is not None:
                problems.append(
                    f"flag {env}/{key} deleted at {w.env_version} (acknowledged) "
                    f"but Redis holds version {doc.get('version')}"
                )
        elif doc is None or doc.get("version") != w.flag_version:
            problems.append(
                f"flag {env}/{key}: the API acknowledged version {w.flag_version} "
                f"(env {w.env_version}) last, Redis holds "
                f"{None if doc is None else doc.get('version')}"
            )
    for c in watched:
        top = max((w.env_version or 0 for w in acked if w.env == c.env), default=0)
        if (c.version or 0) < top:
            problems.append(f"{c.name} at {c.version}, behind acknowledged change {top}")

    # 4. deleted flags stay deleted
    deletions: list[tuple[str, str, int, int | None]] = []
    for d in acked:
        if d.op != "delete":
            continue
        again = [
            w.env_version
            for w in acked
            if w.env == d.env
            and w.key == d.key
            and w.op != "delete"
            and (w.env_version or 0) > (d.env_version or 0)
        ]
        deletions.append((d.env, d.key, d.env_version or 0, min(again) if again else None))
    for c in watched:
        for env, key, at, until in deletions:
            if env != c.env:
                continue
            for e in c.events:
                if e.flags is None or e.held is None or e.held < at:
                    continue
                if until is not None and e.held >= until:
                    continue
                if key in e.flags:
                    problems.append(
                        f"{c.name}: deleted flag {key!r} (at {at}) held again at "
                        f"version {e.held} after a {e.type}"
                    )
                    break

    # 5. READY while behind
    if monitor is not None:
        problems.extend(monitor.violations)

    assert not problems, "invariants broken:\n  " + "\n  ".join(problems[:40])
