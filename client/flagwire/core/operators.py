"""Clause operators and the value parsers that validation and compilation share.

Validation (``_model``) and compilation (``_compile``) must agree exactly on
what a semantic version or a timestamp is, or a document could validate and
then fail to compile.  Both therefore call the parsers here, which return
``None`` instead of raising so the hot evaluation path can use them too
(context attribute values are parsed per call; flag values once, at load).
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeAlias

__all__ = [
    "DATE_OPS",
    "NUMBER_OPS",
    "OPERATORS",
    "SEMVER_OPS",
    "STRING_OPS",
    "SemverKey",
    "is_number",
    "parse_semver",
    "parse_timestamp",
]

#: Operators whose values are strings and whose attribute must be a string.
STRING_OPS: Final = ("starts_with", "ends_with", "contains", "matches")
#: Numeric comparisons: values and attribute are numbers (never booleans).
NUMBER_OPS: Final = ("lt", "lte", "gt", "gte")
#: Instants: RFC 3339 strings or epoch milliseconds.
DATE_OPS: Final = ("before", "after")
#: Semantic-version comparisons (semver 2.0.0 precedence; build metadata ignored).
SEMVER_OPS: Final = ("semver_eq", "semver_lt", "semver_gt")
#: Every operator a clause may use, in the order error messages list them.
OPERATORS: Final = ("in", *STRING_OPS, *NUMBER_OPS, *DATE_OPS, *SEMVER_OPS, "segment_match")

# A semver sort key: (major, minor, patch, prerelease) where prerelease is (1,)
# for a release and (0, id, id, ...) for a pre-release, so that plain tuple
# comparison implements semver precedence (1.0.0-rc.1 < 1.0.0; numeric
# identifiers sort below alphanumeric ones; a shorter identifier list sorts first).
SemverKey: TypeAlias = tuple[int, int, int, tuple[Any, ...]]

_NUM = r"0|[1-9]\d*"
_IDENT = r"[0-9A-Za-z-]+"
# Lenient in one way only: "1" and "1.2" mean "1.0.0" and "1.2.0", since apps
# often report short versions.  Leading zeros and a "v" prefix are refused.
_SEMVER_RE: Final = re.compile(
    rf"({_NUM})(?:\.({_NUM}))?(?:\.({_NUM}))?"
    rf"(?:-({_IDENT}(?:\.{_IDENT})*))?(?:\+({_IDENT}(?:\.{_IDENT})*))?"
)
_NUMERIC_IDENT: Final = re.compile(_NUM)


def parse_semver(text: object) -> SemverKey | None:
    """Return the precedence key of a semantic version, or None if ``text`` is not one."""
    if not isinstance(text, str) or len(text) > 256:
        return None
    m = _SEMVER_RE.fullmatch(text)
    if m is None:
        return None
    major, minor, patch, pre, _build = m.groups()
    if pre is None:
        pre_key: tuple[Any, ...] = (1,)
    else:
        idents: list[tuple[int, int, str]] = []
        for ident in pre.split("."):
            if ident.isdigit():
                if not _NUMERIC_IDENT.fullmatch(ident):
                    return None  # semver forbids leading zeros in numeric identifiers
                idents.append((0, int(ident), ""))
            else:
                idents.append((1, 0, ident))
        pre_key = (0, *idents)
    return (int(major), int(minor or 0), int(patch or 0), pre_key)


_RFC3339_RE: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def parse_timestamp(value: object) -> float | None:
    """Return epoch milliseconds for an RFC 3339 string or a number, else None.

    Numbers are taken as epoch milliseconds.  Strings must carry a zone
    (``Z`` or ``+hh:mm``): an instant without one is ambiguous, so it is
    refused in flags and never matches as an attribute.
    """
    if is_number(value):
        return float(value)  # type: ignore[arg-type]
    if not isinstance(value, str) or len(value) > 64:
        return None
    m = _RFC3339_RE.fullmatch(value)
    if m is None:
        return None
    y, mo, d, h, mi, s, frac, z, sign, oh, om = m.groups()
    try:
        if int(oh or 0) > 23 or int(om or 0) > 59:
            return None
        instant = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), tzinfo=UTC)
    except ValueError:
        return None
    ms = (instant - _EPOCH) / timedelta(milliseconds=1)
    if frac:
        ms += int(frac) / 10 ** len(frac) * 1000
    if not z:
        offset = (int(oh) * 60 + int(om)) * 60_000
        ms += -offset if sign == "+" else offset
    return ms


def is_number(value: object) -> bool:
    """True for a finite int or float; booleans are not numbers here."""
    cls = value.__class__
    if cls is int:
        return True
    if cls is float:
        return math.isfinite(value)  # type: ignore[arg-type]
    return False
