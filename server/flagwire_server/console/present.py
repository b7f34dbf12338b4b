"""Pure helpers the templates use: serving summaries, value labels and readable diffs."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Final

from flagwire.core.limits import WEIGHT_TOTAL

__all__ = ["diff", "label", "serving", "when"]

#: Fields every write changes; a diff that shows them says nothing.
_NOISE: Final = frozenset({"version", "updated_at", "updated_by", "created_at"})


def label(value: Any) -> str:
    """A variation value as people read it: strings bare, everything else as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(", ", ": "))


def _pct(weight: int) -> str:
    text = f"{weight / 1000:.3f}".rstrip("0").rstrip(".")
    return f"{text}%"


def _variation(doc: dict[str, Any], index: Any) -> str:
    variations = doc.get("variations") or []
    if isinstance(index, int) and 0 <= index < len(variations):
        return label(variations[index])
    return "?"


def _serve(doc: dict[str, Any], serve: Any) -> str:
    if not isinstance(serve, dict):
        return "?"
    if "variation" in serve:
        return _variation(doc, serve["variation"])
    slots = (serve.get("rollout") or {}).get("variations") or []
    parts = [
        (s.get("weight", 0), _variation(doc, s.get("variation")))
        for s in slots
        if isinstance(s, dict)
    ]
    parts = [p for p in parts if isinstance(p[0], int) and p[0] > 0]
    if not parts:
        return "?"
    if len(parts) == 1 and parts[0][0] == WEIGHT_TOTAL:
        return parts[0][1]
    variations = doc.get("variations") or []
    if variations and variations[0] is True and len(parts) <= 2:
        true_weight = sum(w for w, v in parts if v == "true")
        return f"{_pct(true_weight)} true"
    return " / ".join(f"{_pct(w)} {v}" for w, v in parts)


def serving(doc: dict[str, Any]) -> str:
    """What a flag serves to most contexts: "true", "25% true", "off → false"."""
    if not doc.get("on"):
        off = doc.get("off_variation")
        return f"off → {_variation(doc, off) if off is not None else 'default'}"
    text = _serve(doc, doc.get("fallthrough"))
    rules, targets = len(doc.get("rules") or []), len(doc.get("targets") or [])
    if rules:
        text += f" · {rules} rule{'s' if rules != 1 else ''}"
    if targets:
        text += f" · {targets} target{'s' if targets != 1 else ''}"
    return text


def when(value: Any) -> str:
    """An ISO timestamp as ``2026-11-29 05:15:32 UTC`` (or the input if not one)."""
    if not isinstance(value, str) or not value:
        return ""
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _flatten(value: Any, path: str, out: dict[str, str]) -> None:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            if path or k not in _NOISE:
                _flatten(v, f"{path}.{k}" if path else str(k), out)
    elif (
        isinstance(value, list)
        and value
        and not all(isinstance(v, str | int | float | bool) for v in value)
    ):
        for i, v in enumerate(value):
            _flatten(v, f"{path}[{i}]", out)
    else:
        out[path] = json.dumps(value, ensure_ascii=False)


def diff(before: Any, after: Any) -> list[dict[str, str]]:
    """Field-by-field changes ``[{path, op, old, new}]`` between two documents.

    ``op`` is ``changed``, ``added`` or ``removed``; server bookkeeping fields
    (version, timestamps, author) are left out.
    """
    old: dict[str, str] = {}
    new: dict[str, str] = {}
    if isinstance(before, dict):
        _flatten(before, "", old)
    if isinstance(after, dict):
        _flatten(after, "", new)
    rows: list[dict[str, str]] = []
    for path in sorted(old.keys() | new.keys(), key=_path_order):
        if path in old and path in new:
            if old[path] != new[path]:
                rows.append({"path": path, "op": "changed", "old": old[path], "new": new[path]})
        elif path in new:
            rows.append({"path": path, "op": "added", "old": "", "new": new[path]})
        else:
            rows.append({"path": path, "op": "removed", "old": old[path], "new": ""})
    return rows


def _path_order(path: str) -> tuple[Any, ...]:
    parts: list[Any] = []
    for piece in path.replace("]", "").replace("[", ".#").split("."):
        parts.append(
            (0, int(piece[1:]), "")
            if piece.startswith("#") and piece[1:].isdigit()
            else (1, 0, piece)
        )
    return tuple(parts)
