"""The store's vocabulary: errors, results and pure helpers (no Redis I/O here).

Split from ``store.py`` so that the write path there reads as one piece;
everything public is re-exported by ``flagwire_server.store.documents``.

Errors (all :class:`StoreError`, itself a ``FlagwireError``)::

    StoreError
    ├── NotFound          no such environment, flag, segment or history version
    ├── Conflict          expected version mismatch (``current_version``)
    │   └── AlreadyExists create of something that exists
    ├── StoreUnavailable  Redis unreachable or timing out
    ├── StoreCorrupt      a key of the wrong type (nothing was written)
    └── SnapshotTooLarge  the write would make the environment too big for clients
                          (also a ValidationError: the API answers 422)
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final, Literal, ParamSpec, TypeVar

import orjson
import redis.exceptions

from flagwire.core.errors import FlagwireError, ValidationError
from flagwire.core.model import validate_flag, validate_segment

Kind = Literal["flag", "segment"]

#: Fields the server owns; callers' values for them are ignored.
SERVER_FIELDS: Final = ("version", "created_at", "updated_at", "updated_by")


class StoreError(FlagwireError):
    """Base of the store's errors."""


class NotFound(StoreError):
    """The environment, document or version does not exist."""


class Conflict(StoreError):
    """The document's current version is not the one the caller expected."""

    def __init__(self, message: str, current_version: int) -> None:
        super().__init__(message)
        self.current_version = current_version


class AlreadyExists(Conflict):
    """A create found the document (or environment) already there."""


class StoreUnavailable(StoreError):
    """Redis could not be reached; nothing was (knowingly) written."""


class StoreCorrupt(StoreError):
    """A Redis key had an unexpected type; the script refused before writing."""


class SnapshotTooLarge(StoreError, ValidationError):
    """The environment's snapshot would exceed what clients accept; nothing was written."""

    def __init__(self, size: int, limit: int) -> None:
        ValidationError.__init__(
            self,
            [
                (
                    "",
                    f"the environment's snapshot would be {size} bytes; clients accept at most "
                    f"{limit} (remove or shrink other flags and segments first)",
                )
            ],
        )
        self.size, self.limit = size, limit


@dataclass(frozen=True, slots=True)
class EnvState:
    """One environment read atomically."""

    version: int
    epoch: str
    flags: dict[str, dict[str, Any]]
    segments: dict[str, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a committed write produced."""

    kind: Kind
    key: str
    doc: dict[str, Any] | None  # None after a delete
    version: int  # the flag's (or segment's) new version
    env_version: int
    committed_ms: int
    previous: dict[str, Any] | None
    #: False for a merge patch that changed nothing: no version, no change-log entry, no frame.
    changed: bool = True


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: str
    actor: str
    action: str
    kind: str
    key: str
    version: int
    flag_version: int
    at_ms: int
    before: dict[str, Any] | None
    after: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": _iso(self.at_ms / 1000),
            "actor": self.actor,
            "action": self.action,
            "kind": self.kind,
            "key": self.key,
            "version": self.version,
            "flag_version": self.flag_version,
            "before": self.before,
            "after": self.after,
        }


P = ParamSpec("P")
T = TypeVar("T")


def _translated(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Translate redis-py's connection errors into :class:`StoreUnavailable`."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise StoreUnavailable(f"store unavailable: {exc}") from None
        except redis.exceptions.ResponseError as exc:
            if "BUSY" in str(exc) or "LOADING" in str(exc):
                raise StoreUnavailable(f"store unavailable: {exc}") from None
            raise StoreCorrupt(f"store refused the command: {exc}") from None

    return wrapper


def as_str(value: Any) -> str:
    """A Redis reply as text: the clients are made without ``decode_responses``,
    so replies are bytes (payloads are forwarded as bytes, unchanged)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _iso(ts: float) -> str:
    return (
        dt.datetime.fromtimestamp(ts, dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def _now() -> str:
    return _iso(dt.datetime.now(dt.UTC).timestamp())


def _loads(raw: Any) -> dict[str, Any] | None:
    if raw is None or raw == b"" or raw == "":
        return None
    value = orjson.loads(raw)
    return value if isinstance(value, dict) else None


def _pairs(flat: list[Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for i in range(0, len(flat), 2):
        doc = _loads(flat[i + 1])
        if doc is not None:
            out[as_str(flat[i])] = doc
    return out


def _script(name: str) -> str:
    return (resources.files("flagwire_server.store") / "scripts" / f"{name}.lua").read_text()


def _version_of(doc: dict[str, Any] | None) -> int:
    if doc is None:
        return 0
    v = doc.get("version")
    return v if type(v) is int else 0


def validate_doc(kind: Kind, doc: dict[str, Any]) -> dict[str, Any]:
    """The core model's normalised copy of a flag or segment (raises ValidationError)."""
    return validate_flag(doc) if kind == "flag" else validate_segment(doc)


def _action(mode: str, cur: dict[str, Any] | None) -> str:
    if mode == "delete":
        return "delete"
    return "update" if cur is not None else "create"


def _body(doc: object, key: str | None) -> dict[str, Any]:
    """The caller's document without server-owned fields, its key checked against the URL."""
    if not isinstance(doc, dict):
        raise ValidationError([("", "expected a JSON object")])
    body = {k: v for k, v in doc.items() if k not in SERVER_FIELDS}
    if key is not None:
        if "key" not in body:
            body["key"] = key
        elif body["key"] != key:
            raise ValidationError([("key", f"document key {body['key']!r} does not match {key!r}")])
    if not isinstance(body.get("key"), str):
        raise ValidationError([("key", "required: a string")])
    return body


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, null deletes, the rest replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = merge_patch(result.get(name), value)
    return result


def _audit_entry(entry_id: str, fields: dict[Any, Any]) -> AuditEntry:
    f = {as_str(k): as_str(v) for k, v in fields.items()}
    return AuditEntry(
        id=entry_id,
        actor=f.get("actor", ""),
        action=f.get("action", ""),
        kind=f.get("kind", ""),
        key=f.get("key", ""),
        version=int(f.get("version", "0") or 0),
        flag_version=int(f.get("flag_version", "0") or 0),
        at_ms=int(f.get("t", "0") or 0),
        before=_loads(f.get("before")),
        after=_loads(f.get("after")),
    )


_U64: Final = 2**64 - 1


def stream_before(cursor: str | None) -> str | None:
    """The inclusive ``XREVRANGE`` max for entries older than ``cursor`` (``ms-seq``).

    ``"+"`` without a cursor; None when nothing can be older (``0-0``).  Computed
    rather than sent as ``(cursor``, which Redis refuses for ``0-0`` and ids past 2**64.
    """
    if not cursor:
        return "+"
    left, _, right = cursor.partition("-")
    ms, seq = int(left or 0), int(right or 0)
    if ms > _U64:
        return "+"
    if seq > _U64:
        seq = _U64 + 1
    if seq > 0:
        return f"{ms}-{seq - 1}"
    return f"{ms - 1}-{_U64}" if ms > 0 else None
