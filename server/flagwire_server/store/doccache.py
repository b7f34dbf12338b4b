"""The stored bytes of documents this process last read or wrote (bounded in bytes).

Why: a write builds the new document on the stored one; remembering it spares
the write a read (a round trip) before its script (``write.py``).  The copy is
only ever a guess: the script compares its SHA-1 with that of what is stored.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any, Final

from flagwire_server.store.types import Kind

__all__ = ["DOC_CACHE_BYTES", "DocCache", "DocId", "sha1_hex", "stored_bytes"]

#: Bytes of stored documents a process remembers to write without reading first.
DOC_CACHE_BYTES: Final = 8 * 1024 * 1024

DocId = tuple[str, Kind, str]  # (environment, kind, key)


def stored_bytes(raw: Any) -> bytes | None:
    """A stored document as bytes (None: absent), whatever the client's decoding."""
    if raw is None or raw == b"" or raw == "":
        return None
    return raw.encode() if isinstance(raw, str) else bytes(raw)


def sha1_hex(raw: bytes | None) -> str:
    """Compared with ``redis.sha1hex`` of the stored bytes: an identity, not a secret."""
    return hashlib.sha1(raw).hexdigest() if raw is not None else ""


class DocCache:
    """The stored bytes of recently read or written documents, least recently used dropped.

    Only ever a guess: the write script checks it against Redis by SHA-1.
    """

    def __init__(self, max_bytes: int = DOC_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._docs: OrderedDict[DocId, tuple[bytes, str]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._docs)

    def get(self, doc_id: DocId) -> tuple[bytes, str] | None:
        hit = self._docs.get(doc_id)
        if hit is not None:
            self._docs.move_to_end(doc_id)
        return hit

    def put(self, doc_id: DocId, raw: bytes | None, sha: str | None = None) -> None:
        """Remember ``raw`` (None: forget the document)."""
        old = self._docs.pop(doc_id, None)
        if old is not None:
            self.size -= len(old[0])
        if raw is None or len(raw) > self.max_bytes // 4:
            return
        self._docs[doc_id] = (raw, sha if sha is not None else sha1_hex(raw))
        self.size += len(raw)
        while self.size > self.max_bytes:
            _, (dropped, _) = self._docs.popitem(last=False)
            self.size -= len(dropped)
