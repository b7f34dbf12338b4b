"""Scheduled changes, the pure part: what a request may ask for and what a due change does.

Why pure: the rules (is it due, was it missed, was the flag edited since it
was scheduled, what does the user's rule say) decide whether a flag is
written, so they are tested exhaustively with plain numbers, no Redis and no
clock.  The runner (``scheduler.py``) feeds them the record, the time and the
flag's current version, and does what :func:`decide` answers.

A scheduled change is one of the writes the admin API can make to a flag:

* ``patch``   — an RFC 7386 merge patch (``{"on": false}`` is a scheduled kill switch);
* ``rollout`` — a new ``fallthrough`` (a variation or a rollout), replacing the old one whole;
* ``replace`` — the whole document;
* ``restore`` — an earlier version from the flag's history.

``if_changed`` says what happens when the flag's version at execution is not
the one it had when the change was scheduled (or last edited):

* ``fail`` (the default) — nothing is written; the change is marked failed and
  says which version it found.  The safe default: the person who scheduled it
  decided against a flag that no longer exists in that form.
* ``skip`` — nothing is written; marked skipped (for changes that only make
  sense on the flag as it was).
* ``apply`` — written anyway on the current flag (a patch merges into it).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Final, Literal

from flagwire.core.errors import ValidationError

__all__ = [
    "ACTIONS",
    "DEFAULT_RULE",
    "DEFAULT_WAIT",
    "FINAL_STATUSES",
    "RULES",
    "STATUSES",
    "Decision",
    "decide",
    "due_ms_of",
    "iso_ms",
    "marker",
    "parse_edit",
    "parse_request",
    "scheduler_actor",
]

Action = Literal["patch", "rollout", "replace", "restore"]
Rule = Literal["apply", "skip", "fail"]

ACTIONS: Final = ("patch", "rollout", "replace", "restore")
RULES: Final = ("apply", "skip", "fail")
DEFAULT_RULE: Final[Rule] = "fail"
#: Seconds an execution waits for clients' acknowledgements (as ``?wait=``).
DEFAULT_WAIT: Final = 5.0
MAX_WAIT: Final = 30.0
#: A change may be scheduled at most this far ahead (ten years, in ms).
MAX_AHEAD_MS: Final = 10 * 366 * 86_400_000
FINAL_STATUSES: Final = ("applied", "skipped", "failed", "missed", "cancelled")
#: Every status a scheduled change can have, in lifecycle order.
STATUSES: Final = ("pending", "running", *FINAL_STATUSES)
_FIELDS: Final = frozenset({"flag", "action", "change", "version", "due_at", "if_changed", "wait"})
_EDITABLE: Final = frozenset({"change", "version", "due_at", "if_changed", "wait"})


#: 9999-12-31T23:59:59Z, the last instant ``datetime`` (and so ``iso_ms``) can print.
_LATEST_S: Final = 253_402_300_799


def due_ms_of(value: object, field: str = "due_at") -> int:
    """``due_at`` as epoch milliseconds: an RFC 3339 time with an offset, or epoch seconds.

    Raises:
        ValidationError: anything else (a time without an offset is ambiguous).
    """
    if isinstance(value, bool):
        raise ValidationError([(field, "expected an RFC 3339 time or epoch seconds")])
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValidationError([(field, f"{value[:60]!r} is not an RFC 3339 time")]) from None
        if when.tzinfo is None:
            raise ValidationError([(field, "give a UTC offset (such as Z or +02:00)")])
        seconds = when.timestamp()
    else:
        raise ValidationError([(field, "expected an RFC 3339 time or epoch seconds")])
    # Checked before any arithmetic: an infinite, NaN or huge value must be a 422, not an
    # OverflowError, and a stored due time must stay printable (iso_ms) for its whole life.
    if not (0 <= seconds <= _LATEST_S):  # also false for NaN
        raise ValidationError([(field, "must lie between 1970-01-01 and 9999-12-31 (UTC)")])
    return round(seconds * 1000)


def iso_ms(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")


def _check_change(action: str, body: dict[str, Any], errors: list[tuple[str, str]]) -> None:
    change, version = body.get("change"), body.get("version")
    if action == "restore":
        if type(version) is not int or version < 1:
            errors.append(("version", "required for restore: a positive integer"))
        if change is not None:
            errors.append(("change", "restore takes a version, not a change"))
    elif action in ("patch", "replace"):
        if not isinstance(change, dict):
            errors.append(("change", f"required for {action}: a JSON object"))
    elif action == "rollout" and not isinstance(change, dict):
        errors.append(("change", "required for rollout: the new fallthrough object"))
    if action != "restore" and version is not None:
        errors.append(("version", "only restore takes a version"))


def _wait(body: dict[str, Any], errors: list[tuple[str, str]]) -> float:
    wait = body.get("wait", DEFAULT_WAIT)
    if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 <= wait <= MAX_WAIT:
        errors.append(("wait", f"expected seconds from 0 to {MAX_WAIT:g}"))
        return DEFAULT_WAIT
    return float(wait)


def parse_request(body: object, *, now_ms: int) -> dict[str, Any]:
    """The fields of a new scheduled change, checked (the flag itself is checked by the store).

    Raises:
        ValidationError: every problem found, each with its field.
    """
    if not isinstance(body, dict):
        raise ValidationError([("", "expected a JSON object")])
    errors: list[tuple[str, str]] = [
        (k, "unknown field") for k in sorted(set(body) - _FIELDS) if isinstance(k, str)
    ]
    flag = body.get("flag")
    if not isinstance(flag, str) or not flag:
        errors.append(("flag", "required: the key of the flag to change"))
    action = body.get("action", "patch")
    if action not in ACTIONS:
        errors.append(("action", f"expected one of {', '.join(ACTIONS)}"))
    else:
        _check_change(action, body, errors)
    rule = body.get("if_changed", DEFAULT_RULE)
    if rule not in RULES:
        errors.append(("if_changed", f"expected one of {', '.join(RULES)}"))
    wait = _wait(body, errors)
    due_ms = 0
    if "due_at" not in body:
        errors.append(("due_at", "required: when to make the change"))
    else:
        try:
            due_ms = due_ms_of(body["due_at"])
        except ValidationError as exc:
            errors.extend(exc.errors)
        else:
            if due_ms > now_ms + MAX_AHEAD_MS:
                errors.append(("due_at", "more than ten years ahead"))
    if errors:
        raise ValidationError(errors)
    return {
        "flag": flag,
        "action": action,
        "change": body.get("change"),
        "version": body.get("version"),
        "due_ms": due_ms,
        "due_at": iso_ms(due_ms),
        "if_changed": rule,
        "wait": wait,
    }


def parse_edit(record: dict[str, Any], body: object, *, now_ms: int) -> dict[str, Any]:
    """``record`` with an edit's fields applied (the flag and the action stay).

    Raises:
        ValidationError: unknown or invalid fields.
    """
    if not isinstance(body, dict):
        raise ValidationError([("", "expected a JSON object")])
    bad = sorted(k for k in body if k not in _EDITABLE)
    if bad:
        raise ValidationError(
            [
                (
                    k,
                    "cannot be edited (cancel and schedule again)"
                    if k in _FIELDS
                    else "unknown field",
                )
                for k in bad
            ]
        )
    merged = {
        "flag": record["flag"],
        "action": record["action"],
        "due_at": record["due_ms"] / 1000,
        "if_changed": record["if_changed"],
        "wait": record["wait"],
    }
    if record.get("change") is not None:
        merged["change"] = record["change"]
    if record.get("version") is not None:
        merged["version"] = record["version"]
    merged.update(body)
    return {**record, **parse_request(merged, now_ms=now_ms)}


def marker(change_id: str) -> str:
    """The suffix of ``updated_by`` that says which scheduled change wrote a version."""
    return f"({change_id})"


def scheduler_actor(record: dict[str, Any]) -> str:
    """Who the audit log names for an execution: ``scheduler, created by alice (sch_…)``."""
    return f"scheduler, created by {record.get('created_by', 'unknown')} {marker(record['id'])}"


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with a claimed change: ``write`` it, or finish it with ``status``."""

    status: Literal["write", "skipped", "failed", "missed"]
    reason: str = ""


def decide(
    record: dict[str, Any], *, now_ms: int, grace_ms: int, current_version: int | None
) -> Decision:
    """The rule for a claimed, due change (``current_version`` None: the flag is gone).

    Missed comes first: a change later than the grace period (every server was
    down at its time) is never written, however the flag looks.
    """
    late = now_ms - int(record["due_ms"])
    if late > grace_ms:
        return Decision(
            "missed",
            f"due {late / 1000:.1f} s ago, past the grace period of {grace_ms / 1000:g} s",
        )
    base = record.get("base_version")
    if current_version is None and record["action"] != "replace":
        return Decision("failed", f"flag {record['flag']!r} no longer exists")
    if current_version == base:
        return Decision("write")
    rule = record.get("if_changed", DEFAULT_RULE)
    found = "deleted" if current_version is None else f"at version {current_version}"
    why = f"the flag was edited since this change was scheduled (version {base}, now {found})"
    if rule == "apply":
        return Decision("write", why)
    return Decision("skipped" if rule == "skip" else "failed", why)
