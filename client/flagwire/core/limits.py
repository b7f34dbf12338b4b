"""Every protocol constant and limit that the server and the clients must agree on.

One home, because copies drift: the key pattern once existed twice, ending
in ``$`` in one copy and ``\\Z`` in the other, so the protocol accepted
``"abc\\n"`` where the model refused it.  The server, the Python client, the
CLI and the tests import these names; a client in another language copies
the values from ``docs/protocol.md`` and ``docs/evaluation.md``, which list
them.

Patterns come twice: ``*_PATTERN`` is the bare pattern (for JSON Schema,
whose ``^…$`` has no multi-line surprises) and ``*_RE`` the compiled,
fully anchored Python regex.  Both are ASCII-only by construction: they use
explicit character classes, never ``\\d`` or ``\\w``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Final

__all__ = [
    "BUCKETS",
    "DEFAULT_HEARTBEAT",
    "ENV_PATTERN",
    "ENV_RE",
    "KEY_PATTERN",
    "KEY_RE",
    "LIMITS",
    "MAX_CLIENT_FRAME",
    "MAX_SERVER_FRAME",
    "MAX_STRING_ATTRIBUTE",
    "PROTOCOL_VERSION",
    "STREAM_PATH",
    "WEIGHT_TOTAL",
    "Limits",
]

#: The wire protocol version spoken in ``hello``.
PROTOCOL_VERSION: Final = 1

#: Path of the WebSocket stream every client holds open.
STREAM_PATH: Final = "/api/v1/stream"

#: Seconds between the server's keep-alive pings: the server's default, and what a
#: client assumes when ``hello`` does not say.
DEFAULT_HEARTBEAT: Final = 15.0

#: Largest frame a client accepts from the server (a snapshot of a big environment).
MAX_SERVER_FRAME: Final = 16 * 1024 * 1024
#: Largest frame the server accepts from a client (acks and resync requests are tiny).
MAX_CLIENT_FRAME: Final = 4 * 1024

#: Total of the weights in a rollout: 100% in thousandths of a percent.
WEIGHT_TOTAL: Final = 100_000
#: Number of buckets a context can land in; one per unit of rollout weight.
BUCKETS: Final = WEIGHT_TOTAL

#: Flag, segment and prerequisite keys (unanchored).
KEY_PATTERN: Final = r"[a-z0-9][a-z0-9._-]{0,127}"
#: :data:`KEY_PATTERN` anchored; ``\Z`` (not ``$``) so ``"a\n"`` is refused.
KEY_RE: Final = re.compile(rf"^{KEY_PATTERN}\Z")

#: Environment names (unanchored).  No ``.``: names appear in Redis keys and URLs.
ENV_PATTERN: Final = r"[a-z0-9][a-z0-9_-]{0,63}"
#: :data:`ENV_PATTERN` anchored with ``\Z``.
ENV_RE: Final = re.compile(rf"^{ENV_PATTERN}\Z")

#: Longest string attribute value the string operators (``starts_with``,
#: ``ends_with``, ``contains``, ``matches``) look at.  A longer value does not
#: match, as a value of the wrong type does not (so a negated clause matches
#: it).  With RE2's linear-time search it bounds what one clause can cost.
MAX_STRING_ATTRIBUTE: Final = 4_096


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits on documents, enforced by validation with a path-naming error.

    They bound memory, snapshot size and worst-case evaluation time; each is
    far above what a hand-written flag needs.  ``as_dict()`` gives the table.
    """

    max_document_bytes: int = 512 * 1024  #: orjson-encoded size of one document
    max_variations: int = 100
    max_targets: int = 100  #: target entries per flag
    max_target_values: int = 10_000  #: context keys per target entry
    max_rules: int = 200  #: rules per flag or segment
    max_clauses: int = 30  #: clauses per rule
    max_clause_values: int = 1_000  #: values per clause
    max_regex_length: int = 256  #: characters in a ``matches`` pattern
    #: RE2 memory budget (bytes) of all ``matches`` patterns of one document compiled
    #: together; it caps their program size, so the regex work of one evaluation.
    max_regex_memory: int = 64 * 1024
    max_prerequisites: int = 20  #: prerequisites per flag
    max_prerequisite_depth: int = 16  #: prerequisite hops below a flag; more is a CYCLE error
    max_segment_values: int = 50_000  #: keys in a segment's included or excluded list
    max_tags: int = 20
    max_tag_length: int = 64
    max_name_length: int = 256  #: flag, segment, rule and attribute names, salt, rule ids
    max_description_length: int = 4_096
    max_errors: int = 100  #: problems reported before the rest are summarised

    def as_dict(self) -> dict[str, int]:
        """The limits as a plain mapping (for docs, the API and error pages)."""
        return asdict(self)


#: The document limits in force.
LIMITS: Final = Limits()
