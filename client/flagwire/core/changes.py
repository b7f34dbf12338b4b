"""What changed: :class:`FlagChange`, and the changes a message or a snapshot made.

Pure and shared: the client announces these to its listeners, and anything
else that follows a stream through :mod:`~flagwire.core.subscription` (the
server's ``flagwire watch``) describes changes with the same values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from flagwire.core._flags import entries_of
from flagwire.core.evaluation import Snapshot

__all__ = ["ChangeKind", "FlagChange", "change_of", "diff"]

ChangeKind = Literal["flag", "segment"]


@dataclass(frozen=True, slots=True)
class FlagChange:
    """A flag (or segment) that changed.

    Attributes:
        key: the flag or segment key.
        old_version: its document version before (None: it did not exist).
        new_version: its document version after (None: it was deleted).
        kind: ``"flag"`` or ``"segment"``.  A segment change may change the
            value of any flag that uses it.
        env_version: the environment version that carried the change.
    """

    key: str
    old_version: int | None
    new_version: int | None
    kind: ChangeKind = "flag"
    env_version: int = 0


def _doc_version(doc: Mapping[str, Any] | None, fallback: int) -> int | None:
    if doc is None:
        return None
    version = doc.get("version")
    return version if type(version) is int else fallback


def change_of(
    kind: ChangeKind,
    key: str,
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any] | None,
    env_version: int,
) -> FlagChange:
    """The change from document ``old`` to ``new`` (either may be None)."""
    return FlagChange(
        key, _doc_version(old, env_version - 1), _doc_version(new, env_version), kind, env_version
    )


def _or(version: int | None, fallback: int) -> int:
    return fallback if version is None else version


def diff(old: Snapshot | None, new: Snapshot) -> list[FlagChange]:
    """Every flag and segment that differs between two snapshots (segments after flags)."""
    changes: list[FlagChange] = []
    # Flags are compared by their JSON first: documents are decoded only when it differs.
    before = entries_of(old.flags) if old else {}
    after = entries_of(new.flags)
    version = new.version
    for key in sorted(before.keys() | after.keys()):
        a, b = before.get(key), after.get(key)
        if a is not None and b is not None and a.same_as(b):
            continue
        old_version = None if a is None else _or(a.version, version - 1)
        new_version = None if b is None else _or(b.version, version)
        changes.append(FlagChange(key, old_version, new_version, "flag", version))
    seg_before: Mapping[str, Any] = old.segments if old else {}
    seg_after = new.segments
    for key in sorted(seg_before.keys() | seg_after.keys()):
        x, y = seg_before.get(key), seg_after.get(key)
        if x is y or x == y:
            continue
        changes.append(change_of("segment", key, x, y, new.version))
    return changes
