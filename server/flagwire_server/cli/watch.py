"""``flagwire watch``: follow an environment's changes live over the stream.

A thin layer over the core's subscription state machine
(:mod:`flagwire.core.subscription`), like the client's connection loop: this
module only moves frames between the socket and the machine and prints what
the machine says happened.  So the watch applies exactly what a client
applies, in the same order: a duplicate is not shown twice, a gap asks the
server for a snapshot, and each applied version is acknowledged, so the
changes it watched count as delivered in a write's propagation figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Annotated

import typer
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from flagwire.core import protocol as proto
from flagwire.core.errors import ProtocolError
from flagwire.core.evaluation import Snapshot
from flagwire.core.limits import MAX_SERVER_FRAME, STREAM_PATH
from flagwire.core.subscription import Outcome, StreamState
from flagwire_server.cli.http import cli_errors, fail
from flagwire_server.cli.options import DEFAULT_URL, Json, Key, Url

__all__ = ["describe", "watch"]


def watch(
    env: str,
    url: Url = DEFAULT_URL,
    admin_key: Key = "",
    sdk_key: Annotated[
        str, typer.Option("--sdk-key", envvar="FLAGWIRE_SDK_KEY", show_default=False)
    ] = "",
    count: Annotated[int, typer.Option(help="stop after N changes (0: never)")] = 0,
    as_json: Json = False,
) -> None:
    """Follow an environment's changes live over the stream."""
    with cli_errors():
        key = sdk_key or admin_key
        if not key:
            fail("no key: pass --sdk-key or --admin-key")
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_watch(url, env, key, count, as_json))


async def _watch(url: str, env: str, key: str, count: int, as_json: bool) -> None:
    ws_url = url.rstrip("/").replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    state = StreamState()
    applied = 0
    try:
        async with websockets.connect(
            f"{ws_url}{STREAM_PATH}?env={env}",
            additional_headers={"Authorization": f"Bearer {key}"},
            max_size=MAX_SERVER_FRAME,
        ) as ws:
            state.connection_opened()
            async for frame in ws:
                raw = frame.encode() if isinstance(frame, str) else frame
                try:
                    msg = proto.decode(raw, max_size=MAX_SERVER_FRAME)
                except ProtocolError as exc:
                    fail(f"bad frame from server: {exc}")
                before = state.snapshot
                try:
                    out = state.receive(msg)
                except ProtocolError as exc:
                    fail(f"cannot follow the stream: {exc}")
                lines = [raw.decode()] if as_json else describe(msg, out, before)
                for line in lines:
                    typer.echo(line)
                sys.stdout.flush()
                if out.ack is not None:
                    await ws.send(proto.encode(proto.Ack(out.ack)).decode())
                if out.resync:
                    await ws.send(proto.encode(proto.Resync()).decode())
                if out.ack is not None and isinstance(msg, proto.Patch | proto.Delete):
                    applied += 1
                    if count and applied >= count:
                        return
    except InvalidStatus as exc:
        fail(f"the stream refused the connection: HTTP {exc.response.status_code}")
    except ConnectionClosed as exc:
        fail(
            f"the stream closed: {exc.rcvd.code if exc.rcvd else ''} "
            f"{exc.rcvd.reason if exc.rcvd else ''}".rstrip()
        )
    except OSError as exc:
        fail(f"cannot reach {url}: {exc}")


def describe(msg: proto.Message, out: Outcome, before: Snapshot | None) -> list[str]:
    """The lines a person sees for one message, from what the state machine made of it.

    Args:
        msg: the decoded message.
        out: what :meth:`~flagwire.core.subscription.StreamState.receive` said it means.
        before: the snapshot held before the message (None: none yet).
    """
    lines: list[str] = []
    if isinstance(msg, proto.Hello):
        lines.append(f"connected to {msg.env} at version {msg.version}")
    elif isinstance(msg, proto.SnapshotMessage):
        lines.append(
            f"v{msg.version} snapshot: {len(msg.flags)} flags, {len(msg.segments)} segments"
        )
    elif isinstance(msg, proto.Error):
        lines.append(f"server error {msg.code}: {msg.message}")
    if out.rewound:
        lines.append(f"note: {out.rewound}")
    if out.gap:
        lines.append(
            f"gap: {out.gap}; "
            + ("asking for a snapshot" if out.resync else "waiting for the snapshot")
        )
    # A first snapshot is the starting point, not a change; a later one (after a
    # gap) is shown as the changes it carried.
    if out.snapshot is not None and (
        before is not None or not isinstance(msg, proto.SnapshotMessage)
    ):
        for change in out.changes:
            if change.new_version is None:
                lines.append(f"v{change.env_version} {change.kind} {change.key} deleted")
                continue
            docs = out.snapshot.flags if change.kind == "flag" else out.snapshot.segments
            doc = docs.get(change.key, {})
            shown = (" on" if doc.get("on") else " off") if change.kind == "flag" else ""
            lines.append(
                f"v{change.env_version} {change.kind} {change.key}{shown} "
                f"(version {change.new_version}, by {doc.get('updated_by', '?')})"
            )
    return lines
