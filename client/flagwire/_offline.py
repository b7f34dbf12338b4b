"""Offline mode: flags from a JSON file, no server.

Two forms are accepted:

* a snapshot document (what persistence writes, or the protocol's
  ``snapshot`` message): ``{"type": "snapshot", "flags": {...}, ...}`` or
  just ``{"flags": {...}, "segments": {...}}``;
* a simple mapping ``{"flag-key": value, ...}``: each flag is on and serves
  that value to everyone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from flagwire.core.errors import ClientError
from flagwire.core.evaluation import Snapshot

__all__ = ["constant_flag", "load_offline", "snapshot_from_values"]


def constant_flag(key: str, value: Any, version: int = 1) -> dict[str, Any]:
    """A flag document that is on and serves ``value`` to every context.

    Booleans get both variations, and turning such a flag off serves ``False``;
    other flags turned off serve the caller's default.
    """
    variations = [value, not value] if isinstance(value, bool) else [value]
    return {
        "key": key,
        "on": True,
        "variations": variations,
        "off_variation": variations.index(False) if isinstance(value, bool) else None,
        "fallthrough": {"variation": 0},
        "version": version,
    }


def snapshot_from_values(
    values: Mapping[str, Any], version: int = 1, epoch: str = "offline"
) -> Snapshot:
    """A snapshot in which each flag serves its value from ``values`` to everyone."""
    flags = {key: constant_flag(key, value) for key, value in values.items()}
    return Snapshot(flags, {}, version, epoch)


def load_offline(path: str | os.PathLike[str]) -> Snapshot:
    """Load an offline flag file (either form, see the module docstring).

    Raises:
        ClientError: the file cannot be read or is not one of the two forms.
    """
    try:
        doc = orjson.loads(Path(path).read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ClientError(f"cannot read the offline flag file {os.fspath(path)!r}: {exc}") from exc
    if not isinstance(doc, dict):
        raise ClientError(f"offline flag file {os.fspath(path)!r} must hold a JSON object")
    flags = doc.get("flags")
    if doc.get("type") == "snapshot" or (
        isinstance(flags, dict) and all(isinstance(v, dict) for v in flags.values())
    ):
        segments = doc.get("segments") or {}
        version = doc.get("version")
        if not isinstance(flags, dict) or not isinstance(segments, dict):
            raise ClientError(
                f"offline flag file {os.fspath(path)!r}: flags and segments must be objects"
            )
        return Snapshot(
            flags,
            segments,
            version if type(version) is int else 1,
            str(doc.get("epoch") or "offline"),
        )
    return snapshot_from_values(doc)
