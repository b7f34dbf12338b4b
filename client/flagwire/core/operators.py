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
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final, TypeAlias

import re2

from flagwire.core.limits import LIMITS

__all__ = [
    "DATE_OPS",
    "NUMBER_OPS",
    "OPERATORS",
    "SEMVER_OPS",
    "STRING_OPS",
    "SemverKey",
    "compile_matcher",
    "is_number",
    "parse_semver",
    "parse_timestamp",
    "regex_budget_overrun",
    "regex_problem",
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

_NUM = r"0|[1-9][0-9]*"  # ASCII digits only: "1\u0662" is not twelve
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


# ``[0-9]``, never ``\d``: ``\d`` also matches full-width and Arabic-Indic digits,
# which ``int()`` then happily reads.
_RFC3339_RE: Final = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]{1,9}))?(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))"
)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_NS_PER_MS: Final = 1_000_000
_NS_PER_S: Final = 1_000_000_000


def parse_timestamp(value: object) -> int | None:
    """Return epoch **nanoseconds** for an RFC 3339 string or a number, else None.

    Numbers are taken as epoch milliseconds (a fraction is kept to the
    nanosecond, truncated toward earlier).  Strings must carry a zone
    (``Z`` or ``+hh:mm``): an instant without one is ambiguous, so it is
    refused in flags and never matches as an attribute.

    Integers, not floats: a float of milliseconds near today has about
    0.2 µs of resolution, so ``…T11:59:59.999999999Z`` became exactly noon
    and was not ``before`` it.  Nine fraction digits are exact here.
    """
    if isinstance(value, int) and value.__class__ is int:  # not a bool
        return value * _NS_PER_MS
    if isinstance(value, float) and value.__class__ is float:
        if not math.isfinite(value):
            return None
        whole = math.floor(value)
        # value - whole is exact for a float; the product rounds below 1 ns.
        return whole * _NS_PER_MS + math.floor((value - whole) * _NS_PER_MS)
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
    delta = instant - _EPOCH  # days and seconds: exact integers
    ns = (delta.days * 86_400 + delta.seconds) * _NS_PER_S
    if frac:
        ns += int(frac.ljust(9, "0"))
    if not z:
        offset = (int(oh) * 60 + int(om)) * 60 * _NS_PER_S
        ns += -offset if sign == "+" else offset
    return ns


def is_number(value: object) -> bool:
    """True for a finite int or float; booleans are not numbers here."""
    cls = value.__class__
    if cls is int:
        return True
    if cls is float:
        return math.isfinite(value)  # type: ignore[arg-type]
    return False


# --- matches: RE2, linear in the length of the text ---------------------------------
#
# Python's ``re`` backtracks: ``\w+@example\.com$`` took 39.6 s on an 80,000
# character email and held the server's event loop all that time.  RE2 runs
# in time linear in the text for any pattern it accepts; it refuses what it
# cannot do that way (lookaround, backreferences), which validation reports.


def _re2_options() -> Any:
    options = re2.Options()
    options.log_errors = False  # a refused pattern is a ValidationError, not a line on stderr
    options.never_capture = True  # only "is there a match" is asked
    # Caps the program (so the time per character searched) and the DFA cache
    # of one compiled pattern; past the cache RE2 falls back to its NFA, still linear.
    options.max_mem = LIMITS.max_regex_memory
    return options


_RE2_OPTIONS: Final = _re2_options()


def regex_problem(pattern: str) -> str | None:
    """Why RE2 cannot compile ``pattern``, or None if it can."""
    try:
        re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        return f"invalid regular expression (RE2 syntax): {reason}"
    return None


def _joined(patterns: Sequence[str]) -> str:
    return "|".join(f"(?:{p})" for p in patterns)


def regex_budget_overrun(patterns: Sequence[str]) -> int | None:
    """Index of the pattern with which ``patterns`` outgrow RE2's budget together, or None.

    Each pattern must compile on its own (see :func:`regex_problem`).  The
    search is a bisection, so a document with many patterns costs a few
    compiles, not one per pattern.
    """

    def fits(n: int) -> bool:
        try:
            re2.compile(_joined(patterns[:n]), _RE2_OPTIONS)
        except re2.error:
            return False
        return True

    if not patterns or fits(len(patterns)):
        return None
    low, high = 0, len(patterns)  # patterns[:low] fit, patterns[:high] do not
    while high - low > 1:
        mid = (low + high) // 2
        if fits(mid):
            low = mid
        else:
            high = mid
    return high - 1


def compile_matcher(patterns: Sequence[str]) -> Callable[[str], bool]:
    """One test for a ``matches`` clause: does any of ``patterns`` match a string?

    All patterns become one RE2 alternation, so a clause costs one pass over
    the text however many values it has.  The text is searched as UTF-8
    with ``surrogatepass`` so that a lone surrogate (impossible in JSON,
    possible in a Python ``str``) cannot raise.

    Raises:
        re2.error: a pattern does not compile (validation refuses those first).
    """
    try:
        joined = re2.compile(_joined(patterns), _RE2_OPTIONS)
    except re2.error:
        # Validation keeps a document's patterns within the budget together;
        # a document that skipped it gets its patterns searched one by one.
        searches = tuple(re2.compile(p, _RE2_OPTIONS).search for p in patterns)

        def any_of(text: str) -> bool:
            data = text.encode("utf-8", "surrogatepass")
            return any(search(data) is not None for search in searches)

        return any_of
    search = joined.search

    def test(text: str) -> bool:
        return search(text.encode("utf-8", "surrogatepass")) is not None

    return test
