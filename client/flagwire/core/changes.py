"""What changed: :class:`FlagChange`, and the changes a message or a snapshot made.

Pure and shared: the client announces these to its listeners, and anything
else that follows a stream through :mod:`~flagwire.core.subscription` (the
server's ``flagwire watch``) describes changes with the same values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

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


def diff(old: Snapshot | None, new: Snapshot) -> list[FlagChange]:
    """Every flag and segment that differs between two snapshots (segments after flags)."""
    changes: list[FlagChange] = []
    pairs: tuple[tuple[ChangeKind, Mapping[str, Any], Mapping[str, Any]], ...] = (
        ("flag", old.flags if old else {}, new.flags),
        ("segment", old.segments if old else {}, new.segments),
    )
    for kind, before, after in pairs:
        for key in sorted(before.keys() | after.keys()):
            a, b = before.get(key), after.get(key)
            if a is b or a == b:
                continue
            changes.append(change_of(kind, key, a, b, new.version))
    return changes
