"""Collecting validation problems: :class:`Checker` and the helpers every check uses.

Split from ``model.py`` (issue 11): the model says *what* a flag or segment
is; this is the machinery that walks a document and records, for each
problem, the JSON path where it was found and a message that names it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

import orjson

from flagwire.core.errors import ValidationError
from flagwire.core.limits import KEY_RE, LIMITS
from flagwire.core.operators import is_number, regex_budget_overrun

__all__ = ["Checker", "is_index", "join", "kind_of", "show", "strings"]


def show(value: Any) -> str:
    text = orjson.dumps(value).decode() if jsonable(value) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def jsonable(value: Any) -> bool:
    try:
        orjson.dumps(value)
    except TypeError:
        return False
    return True


def kind_of(value: Any) -> str | None:
    """The variation kind of a value: bool, string, number, json; None if unusable."""
    if value is True or value is False:
        return "bool"
    if isinstance(value, str):
        return "string"
    if is_number(value):
        return "number"
    if isinstance(value, dict | list):
        return "json"
    return None


class Checker:
    """Collects ``(path, message)`` problems while walking one document."""

    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []
        self.patterns: list[tuple[str, str]] = []  #: (path, pattern) of every ``matches`` value

    def err(self, path: str, msg: str) -> None:
        self.errors.append((path, msg))

    def fields(self, obj: dict[str, Any], allowed: frozenset[str], path: str) -> None:
        for name in obj:
            if name not in allowed:
                hint = difflib.get_close_matches(str(name), sorted(allowed), n=1)
                more = f'; did you mean "{hint[0]}"?' if hint else ""
                self.err(join(path, str(name)), f'unknown field "{name}"{more}')

    def obj(self, value: Any, path: str, what: str = "an object") -> bool:
        if isinstance(value, dict):
            return True
        self.err(path, f"expected {what}, got {show(value)}")
        return False

    def array(self, value: Any, path: str, limit: int, *, min_len: int = 0) -> bool:
        if not isinstance(value, list):
            self.err(path, f"expected an array, got {show(value)}")
            return False
        if len(value) > limit:
            self.err(path, f"too many items: {len(value)} > limit {limit}")
            return False
        if len(value) < min_len:
            self.err(path, f"expected at least {min_len} item{'s' if min_len > 1 else ''}")
            return False
        return True

    def text(self, value: Any, path: str, limit: int, *, empty: bool = True) -> bool:
        if not isinstance(value, str):
            self.err(path, f"expected a string, got {show(value)}")
        elif len(value) > limit:
            self.err(path, f"too long: {len(value)} characters > limit {limit}")
        elif not empty and not value:
            self.err(path, "must not be empty")
        else:
            return True
        return False

    def key(self, value: Any, path: str) -> bool:
        if isinstance(value, str) and KEY_RE.match(value):
            return True
        self.err(
            path,
            f"{show(value)} is not a valid key (lowercase letters, digits, '.', '_', "
            "'-'; starting with a letter or digit; at most 128 characters)",
        )
        return False

    def index(self, value: Any, path: str, count: int) -> bool:
        if value.__class__ is not int:
            self.err(path, f"expected a variation index (integer), got {show(value)}")
        elif not 0 <= value < count:
            self.err(
                path,
                f"variation index {value} out of range; the flag has {count} "
                f"variation{'s' if count != 1 else ''} (0..{count - 1})",
            )
        else:
            return True
        return False

    def raise_if_any(self) -> None:
        if not self.errors and self.patterns:
            at = regex_budget_overrun([pattern for _, pattern in self.patterns])
            if at is not None:
                self.err(
                    self.patterns[at][0],
                    f"the document's matches patterns up to this one need more than "
                    f"{LIMITS.max_regex_memory} bytes compiled together (RE2's budget); "
                    "use fewer or simpler patterns (counted repetition such as {1000} is costly)",
                )
        if self.errors:
            errors = self.errors[: LIMITS.max_errors]
            if len(self.errors) > LIMITS.max_errors:
                errors.append(("", f"... and {len(self.errors) - LIMITS.max_errors} more problems"))
            raise ValidationError(errors)


def join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def is_index(check: Checker, value: Any, path: str) -> bool:
    """Without valid variations only the type of an index can be checked."""
    if value.__class__ is int and value >= 0:
        return True
    check.err(path, f"expected a variation index (integer), got {show(value)}")
    return False


def strings(check: Checker, values: Iterable[Any], path: str, what: str) -> None:
    for i, v in enumerate(values):
        if not isinstance(v, str):
            check.err(f"{path}[{i}]", f"expected {what}, got {show(v)}")
