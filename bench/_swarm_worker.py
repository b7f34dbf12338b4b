"""One worker process of the swarm: thousands of lean protocol connections on one loop.

Each connection is a bare :class:`asyncio.Protocol` with its own minimal frame
reader: no task, no queue and no compression per connection, so that the
client side is cheap next to the server being measured.  Every connection
applies what it receives the way a real client does (decodes the JSON, checks
that versions rise by exactly one, keeps each flag's version, acknowledges
each version) and stamps its arrival with ``time.monotonic_ns()``.

Why ``_Conn`` and :class:`Worker` share this module (a little over 400 lines):
they are one concept, split in two only for the per-frame hot path, and call
each other on every frame; apart they would be an import cycle.  The commands
a worker obeys, and the coordinator that sends them, are in ``bench/_swarm.py``.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import os
import random
import resource
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["Worker", "pin", "raise_nofile"]

_HANDSHAKE, _OPEN, _CLOSED = 0, 1, 2
_ZERO_MASK = b"\x00\x00\x00\x00"  # a fixed mask is legal for a benchmark and keeps acks cheap


def raise_nofile(want: int = 1 << 20) -> int:
    """Raise this process's open-file limit as far as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(want, hard) if hard != resource.RLIM_INFINITY else want
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def pin(cpus: set[int] | None) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)


def _client_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + _ZERO_MASK + payload


class _Conn(asyncio.Protocol):
    __slots__ = (
        "buf",
        "epoch",
        "flags",
        "frag",
        "gaps",
        "idx",
        "ready",
        "stale",
        "stalled",
        "state",
        "transport",
        "version",
        "vt",
        "w",
    )

    def __init__(self, worker: Worker, idx: int, stalled: bool) -> None:
        self.w = worker
        self.idx = idx
        self.stalled = stalled
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.frag = b""
        self.state = _HANDSHAKE
        self.version = -1
        self.epoch = ""
        self.vt = 0
        self.flags: dict[str, int] = {}
        self.gaps = 0
        self.stale = 0
        self.ready: asyncio.Future[bool] | None = None

    # -- asyncio.Protocol --------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.state = _HANDSHAKE
        self.buf = b""
        transport.write(self.w.request(self))

    def connection_lost(self, exc: Exception | None) -> None:
        was_open = self.state == _OPEN
        self.state = _CLOSED
        self.transport = None
        if self.ready is not None and not self.ready.done():
            self.ready.set_result(False)
        self.w.lost(self, was_open)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        if self.state == _HANDSHAKE:
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, rest = self.buf[:end], self.buf[end + 4 :]
            self.buf = b""
            if not head.startswith(b"HTTP/1.1 101"):
                self.w.refused += 1
                self.w.last_refusal = head.split(b"\r\n", 1)[0].decode("latin-1")
                if self.ready is not None and not self.ready.done():
                    self.ready.set_result(False)
                assert self.transport is not None
                self.transport.close()
                return
            self.state = _OPEN
            self.w.opened(self)
            if self.ready is not None and not self.ready.done():
                self.ready.set_result(True)
            if self.stalled:
                assert self.transport is not None
                self.transport.pause_reading()
            if not rest:
                return
            data = rest
        buf = self.buf + data if self.buf else data
        pos, n = 0, len(buf)
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            ln, hl = b1 & 0x7F, 2
            if ln == 126:
                if n - pos < 4:
                    break
                ln, hl = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif ln == 127:
                if n - pos < 10:
                    break
                ln, hl = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            end = pos + hl + ln
            if end > n:
                break
            payload = buf[pos + hl : end]
            pos = end
            op = b0 & 0x0F
            if op in (0, 1, 2):
                if not b0 & 0x80:  # fragment: keep until FIN
                    self.frag += payload
                    continue
                if self.frag:
                    payload, self.frag = self.frag + payload, b""
                self.w.message(self, payload, now)
            elif op == 9 and self.transport is not None:
                self.transport.write(_client_frame(10, payload))
            elif op == 8 and self.transport is not None:
                self.w.close_codes[
                    int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                ] += 1
                self.transport.write(_client_frame(8, payload[:2]))
                self.transport.close()
                break
        self.buf = buf[pos:] if pos < n else b""


@dataclass
class _Hits:
    count: int = 0
    min_t: int = 0
    max_t: int = 0


class _Counter(dict[int, int]):
    def __missing__(self, key: int) -> int:
        return 0


@dataclass
class Worker:
    host: str
    port: int
    path: str
    headers: dict[str, str]
    reconnect: bool = False
    spread: float = 1.0
    resume: bool = True
    ack: bool = True
    lean: bool = False
    conns: list[_Conn] = field(default_factory=list)
    tasks: set[asyncio.Future[bool]] = field(default_factory=set)
    open_ts: list[int] = field(default_factory=list)
    hits: dict[int, _Hits] = field(default_factory=dict)
    n_open: int = 0
    refused: int = 0
    last_refusal: str = ""
    reconnects: int = 0
    drops: int = 0
    gaps: int = 0
    stale: int = 0
    resyncs: int = 0
    bad: int = 0
    frame_bytes: int = 0
    close_codes: _Counter = field(default_factory=_Counter)

    def request(self, conn: _Conn) -> bytes:
        path = self.path
        if self.resume and conn.version >= 0 and conn.epoch:
            sep = "&" if "?" in path else "?"
            path = f"{path}{sep}since={conn.version}&epoch={conn.epoch}"
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{k}: {v}" for k, v in self.headers.items()),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def opened(self, conn: _Conn) -> None:
        self.n_open += 1
        self.open_ts.append(time.monotonic_ns())

    def lost(self, conn: _Conn, was_open: bool) -> None:
        if was_open:
            self.n_open -= 1
            self.drops += 1
        if self.reconnect:
            delay = random.uniform(0.05, max(0.05, self.spread))
            asyncio.get_running_loop().call_later(delay, self._redial, conn)

    def _redial(self, conn: _Conn) -> None:
        self.reconnects += 1
        task = asyncio.ensure_future(self._dial(conn, retry=True))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _dial(self, conn: _Conn, retry: bool = False) -> bool:
        loop = asyncio.get_running_loop()
        conn.ready = loop.create_future()
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if conn.stalled:  # a tiny receive window makes the server's side fill up quickly
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            await loop.sock_connect(sock, (self.host, self.port))
            await loop.create_connection(lambda: conn, sock=sock)
            return await asyncio.wait_for(conn.ready, 30)
        except (OSError, TimeoutError):
            if retry and self.reconnect:
                self.lost(conn, False)
            return False

    def message(self, conn: _Conn, payload: bytes, now: int) -> None:
        self.frame_bytes = len(payload)
        if self.lean and payload.startswith(b'{"type":"patch"') and payload.endswith(b"}"):
            # lean mode: the version is the last field of a patch (see patch_template)
            v = int(payload[payload.rindex(b":") + 1 : -1])
            if conn.version >= 0 and v != conn.version + 1:
                self.message_slow(conn, payload, now)
                return
            self._applied(conn, v, now)
            return
        self.message_slow(conn, payload, now)

    def message_slow(self, conn: _Conn, payload: bytes, now: int) -> None:
        try:
            msg = orjson.loads(payload)
            kind = msg["type"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self.bad += 1
            return
        if kind in ("patch", "delete"):
            v = msg["version"]
            if conn.version >= 0 and v != conn.version + 1:
                if v <= conn.version:
                    conn.stale += 1
                    self.stale += 1
                    return
                conn.gaps += 1
                self.gaps += 1
                self.resyncs += 1
                if conn.transport is not None and not conn.transport.is_closing():
                    conn.transport.write(_client_frame(1, b'{"type":"resync"}'))
                return
            if kind == "patch":
                data = msg.get("data") or {}
                conn.flags[msg["key"]] = data.get("version", v)
            else:
                conn.flags.pop(msg["key"], None)
        elif kind == "snapshot":
            v = msg["version"]
            conn.epoch = msg.get("epoch", conn.epoch)
            conn.flags = {k: d.get("version", 0) for k, d in msg.get("flags", {}).items()}
        elif kind == "hello":
            conn.epoch = msg.get("epoch", "")
            return
        else:
            return
        self._applied(conn, v, now)

    def _applied(self, conn: _Conn, v: int, now: int) -> None:
        conn.version = v
        conn.vt = now
        h = self.hits.get(v)
        if h is None:
            if len(self.hits) > 4096:
                for old in sorted(self.hits)[:2048]:
                    del self.hits[old]
            h = self.hits[v] = _Hits(0, now, now)
        h.count += 1
        h.max_t = now
        if conn.transport is not None and self.ack and not conn.transport.is_closing():
            conn.transport.write(_client_frame(1, b'{"type":"ack","version":%d}' % v))

    # -- commands ------------------------------------------------------------
    async def connect(self, n: int, concurrency: int, stall_fraction: float) -> dict[str, Any]:
        start = len(self.conns)
        n_stalled = round(n * stall_fraction)
        stalled_idx = set(random.Random(7).sample(range(n), n_stalled)) if n_stalled else set()
        new = [_Conn(self, start + i, i in stalled_idx) for i in range(n)]
        self.conns.extend(new)
        sem = asyncio.Semaphore(concurrency)

        async def one(c: _Conn) -> bool:
            async with sem:
                return await self._dial(c)

        t0 = time.monotonic_ns()
        results = await asyncio.gather(*(one(c) for c in new))
        t1 = time.monotonic_ns()
        gc.collect()
        gc.freeze()
        return {"ok": sum(results), "failed": n - sum(results), "t0": t0, "t1": t1, **self.stats()}

    async def wait(
        self,
        version: int,
        timeout: float,  # noqa: ASYNC109
        expect: int | None,
    ) -> dict[str, Any]:
        """Until every counted connection is at ``version`` or later (or ``timeout``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        want = expect if expect is not None else sum(1 for c in self.conns if not c.stalled)
        last_scan = 0.0
        while True:
            h = self.hits.get(version)
            if h is not None and h.count >= want:
                return {"reached": h.count, "want": want, "max_t": h.max_t, "min_t": h.min_t}
            now = loop.time()
            if now - last_scan > 0.05:
                last_scan = now
                live = [c for c in self.conns if not c.stalled]
                at = [c for c in live if c.version >= version]
                if len(at) >= want:
                    ts = [c.vt for c in at]
                    return {
                        "reached": len(at),
                        "want": want,
                        "max_t": max(ts, default=0),
                        "min_t": min(ts, default=0),
                    }
            if now > deadline:
                live = [c for c in self.conns if not c.stalled]
                at = [c for c in live if c.version >= version]
                return {
                    "reached": len(at),
                    "want": want,
                    "max_t": max((c.vt for c in at), default=0),
                    "min_t": min((c.vt for c in at), default=0),
                    "timeout": True,
                }
            await asyncio.sleep(0.001)

    def check(self, expected: dict[str, int], version: int) -> dict[str, Any]:
        """Compare every live connection's flag versions with the store's."""
        wrong = behind = 0
        for c in self.conns:
            if c.stalled:
                continue
            if c.version < version:
                behind += 1
            if c.flags != expected:
                wrong += 1
        return {"wrong": wrong, "behind": behind}

    def stats(self) -> dict[str, Any]:
        versions = [c.version for c in self.conns if not c.stalled]
        return {
            "conns": len(self.conns),
            "open": self.n_open,
            "refused": self.refused,
            "last_refusal": self.last_refusal,
            "drops": self.drops,
            "reconnects": self.reconnects,
            "gaps": self.gaps,
            "stale": self.stale,
            "resyncs": self.resyncs,
            "bad": self.bad,
            "frame_bytes": self.frame_bytes,
            "close_codes": dict(self.close_codes),
            "min_version": min(versions, default=-1),
            "max_version": max(versions, default=-1),
            "rss": _rss(),
        }

    def close_all(self) -> None:
        self.reconnect = False
        for c in self.conns:
            if c.transport is not None:
                c.transport.abort()


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
