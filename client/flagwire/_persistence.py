"""Saving the latest snapshot to a local file, atomically, and loading it back.

The file is the protocol's snapshot message plus ``saved_at`` (Unix time), so
it is readable by eye and by :func:`flagwire.core.protocol.decode`.  A write goes
to a temporary file in the same directory, is fsynced, renamed over the old
file, and the directory is fsynced: a crash leaves the old file or the new
one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from flagwire.core import protocol as proto
from flagwire.core.errors import ProtocolError
from flagwire.core.evaluation import Snapshot

__all__ = ["load_snapshot", "save_snapshot", "snapshot_from_document"]


def save_snapshot(path: str | os.PathLike[str], snapshot: Snapshot, env: str = "") -> None:
    """Write ``snapshot`` to ``path`` atomically (tmp file, fsync, rename, fsync dir).

    Raises:
        OSError: the file cannot be written (the old one is left in place).
    """
    target = Path(path)
    doc: dict[str, Any] = {
        "type": "snapshot",
        "env": env or "default",
        "epoch": snapshot.epoch,
        "version": snapshot.version,
        "flags": dict(snapshot.flags),
        "segments": dict(snapshot.segments),
        "saved_at": time.time(),
    }
    data = orjson.dumps(doc)
    directory = target.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # not every platform can open a directory
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def snapshot_from_document(doc: bytes) -> tuple[Snapshot, str, float | None]:
    """Parse the bytes of a saved snapshot into ``(snapshot, env, saved_at)``.

    Raises:
        ProtocolError: the bytes are not a snapshot document.
    """
    msg = proto.decode(doc)
    if not isinstance(msg, proto.SnapshotMessage):
        raise ProtocolError(f"expected a snapshot document, got {msg.type}")
    saved_at = orjson.loads(doc).get("saved_at")
    snap = Snapshot(msg.flags, msg.segments, msg.version, msg.epoch)
    return snap, msg.env, float(saved_at) if isinstance(saved_at, int | float) else None


def load_snapshot(path: str | os.PathLike[str]) -> tuple[Snapshot, str, float] | None:
    """Load a snapshot written by :func:`save_snapshot`; None when there is none.

    Returns:
        ``(snapshot, env, saved_at)`` — ``saved_at`` falls back to the file's
        modification time.

    Raises:
        ProtocolError: the file exists but is not a valid snapshot.
    """
    target = Path(path)
    try:
        data = target.read_bytes()
        mtime = target.stat().st_mtime
    except FileNotFoundError:
        return None
    snap, env, saved_at = snapshot_from_document(data)
    return snap, env, saved_at if saved_at is not None else mtime
