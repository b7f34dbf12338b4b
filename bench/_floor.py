"""The floor: a bare ``websockets`` broadcast server with no Redis and no flag logic.

Run as ``python -m bench._floor --port P --control-port C [--mode write|broadcast]``.
Clients connect to ``ws://127.0.0.1:P/``.  The coordinator connects to the
control port and sends one line per broadcast: the message (JSON, one line).
The server answers ``ok <n>`` once it has handed the message to every
connection — in ``write`` mode the frame is built once (header included) and
written to each connection's transport, in ``broadcast`` mode it goes through
``websockets.asyncio.server.broadcast``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import resource
import time
from typing import Any

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed


def server_frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + payload


async def main(port: int, control_port: int, mode: str) -> None:
    conns: set[ServerConnection] = set()

    async def handler(ws: ServerConnection) -> None:
        conns.add(ws)
        try:
            async for _ack in ws:  # read and drop the clients' acks (with --floor-ack)
                pass
        except ConnectionClosed:
            pass
        finally:
            conns.discard(ws)

    async def control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            payload = line.rstrip(b"\n")
            if payload == b"gc":
                gc.collect()
                gc.freeze()
                writer.write(b"ok\n")
                continue
            t0 = time.perf_counter_ns()
            if mode == "write":
                frame = server_frame(payload)
                for ws in conns:
                    t: Any = ws.transport
                    t.write(frame)
            else:
                broadcast(conns, payload.decode())
            writer.write(f"ok {len(conns)} {time.perf_counter_ns() - t0}\n".encode())

    async with serve(
        handler,
        "127.0.0.1",
        port,
        compression=None,
        ping_interval=None,
        backlog=8192,
        max_size=4096,
    ):
        ctl = await asyncio.start_server(control, "127.0.0.1", control_port)
        async with ctl:
            await asyncio.Future()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--control-port", type=int, required=True)
    ap.add_argument("--mode", choices=("write", "broadcast"), default="write")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    gc.freeze()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    asyncio.run(main(a.port, a.control_port, a.mode))
