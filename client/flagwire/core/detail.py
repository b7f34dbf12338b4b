"""The result of an evaluation: :class:`EvaluationDetail`, :class:`Reason`, :class:`ErrorKind`.

Kept apart from ``_evaluation`` only so the compiler can build every detail
object ahead of time without importing the snapshot; ``flagwire.core.evaluation``
re-exports all three names.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = ["ErrorKind", "EvaluationDetail", "Reason"]


class Reason(StrEnum):
    """Why a flag evaluated to its value.  Members are ``str``: ``Reason.OFF == "OFF"``."""

    OFF = "OFF"  #: the flag is off: its off variation (or the caller's default)
    TARGET_MATCH = "TARGET_MATCH"  #: the context key is listed in the flag's targets
    RULE_MATCH = "RULE_MATCH"  #: a rule matched (rule_index, rule_id say which)
    FALLTHROUGH = "FALLTHROUGH"  #: nothing matched: the fallthrough variation or rollout
    PREREQUISITE_FAILED = "PREREQUISITE_FAILED"  #: prerequisite_key was not satisfied
    ERROR = "ERROR"  #: the caller's default was served; error_kind says why

    # Enum's own __hash__ is a Python call (hash of the name); names equal values
    # here, so str's C hash gives the same numbers for a fraction of the cost, and
    # fleet insight hashes a reason on every evaluation it counts.
    __hash__ = str.__hash__


class ErrorKind(StrEnum):
    """What went wrong when the reason is ``ERROR``."""

    FLAG_NOT_FOUND = "FLAG_NOT_FOUND"  #: no flag with that key in the snapshot
    WRONG_TYPE = "WRONG_TYPE"  #: the flag's variations are not of the requested kind
    MALFORMED_FLAG = "MALFORMED_FLAG"  #: the document (or a segment it uses) is invalid
    CLIENT_NOT_READY = "CLIENT_NOT_READY"  #: no data yet (set by the client, not the evaluator)
    PREREQUISITE_CYCLE = "PREREQUISITE_CYCLE"  #: prerequisites loop, or nest too deep
    INVALID_CONTEXT = "INVALID_CONTEXT"  #: the context is not a mapping with a string "key"


@dataclass(frozen=True, slots=True)
class EvaluationDetail:
    """The value served, the variation index it came from, and why.

    Instances for every non-error outcome of a flag are built once when the
    flag is compiled and shared by all evaluations, so treat ``value`` as
    read-only even when it is a dict or list.
    """

    value: Any
    variation_index: int | None
    reason: str
    rule_index: int | None = None
    rule_id: str | None = None
    prerequisite_key: str | None = None
    error_kind: str | None = None
