"""``flagwire watch``: follow an environment's changes live over the stream.

It speaks the same protocol as the client (``flagwire.core.protocol``): it
acknowledges each version it prints, so the changes it watched count as
delivered in a write's propagation figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Annotated

import typer

from flagwire_server.cli.http import cli_errors, fail
from flagwire_server.cli.options import DEFAULT_URL, Json, Key, Url

__all__ = ["watch"]


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
    import websockets
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    from flagwire.core.errors import ProtocolError
    from flagwire.core.limits import MAX_SERVER_FRAME, STREAM_PATH
    from flagwire.core.protocol import Ack, Delete, Hello, Patch, SnapshotMessage
    from flagwire.core.protocol import decode as decode_msg
    from flagwire.core.protocol import encode as encode_msg

    ws_url = url.rstrip("/").replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    seen = 0
    try:
        async with websockets.connect(
            f"{ws_url}{STREAM_PATH}?env={env}",
            additional_headers={"Authorization": f"Bearer {key}"},
            max_size=MAX_SERVER_FRAME,
        ) as ws:
            async for frame in ws:
                raw = frame.encode() if isinstance(frame, str) else frame
                try:
                    msg = decode_msg(raw, max_size=MAX_SERVER_FRAME)
                except ProtocolError as exc:
                    fail(f"bad frame from server: {exc}")
                if as_json:
                    typer.echo(raw.decode())
                elif isinstance(msg, Hello):
                    typer.echo(f"connected to {msg.env} at version {msg.version}")
                elif isinstance(msg, SnapshotMessage):
                    typer.echo(
                        f"v{msg.version} snapshot: {len(msg.flags)} flags, "
                        f"{len(msg.segments)} segments"
                    )
                elif isinstance(msg, Patch):
                    state = (
                        (" " + ("on" if msg.data.get("on") else "off"))
                        if msg.kind == "flag"
                        else ""
                    )
                    typer.echo(
                        f"v{msg.version} {msg.kind} {msg.key}{state} "
                        f"(version {msg.data.get('version')}, by "
                        f"{msg.data.get('updated_by', '?')})"
                    )
                elif isinstance(msg, Delete):
                    typer.echo(f"v{msg.version} {msg.kind} {msg.key} deleted")
                else:
                    typer.echo(str(msg))
                sys.stdout.flush()
                version = getattr(msg, "version", None)
                if isinstance(msg, Patch | Delete | SnapshotMessage) and isinstance(version, int):
                    await ws.send(encode_msg(Ack(version)).decode())
                if isinstance(msg, Patch | Delete):
                    seen += 1
                    if count and seen >= count:
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
