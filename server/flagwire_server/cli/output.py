"""What the admin commands print: a table for people, JSON (``--json``) for scripts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import orjson
import typer

__all__ = ["emit", "write_summary"]


def emit(
    data: Any,
    as_json: bool,
    rows: Sequence[Sequence[Any]] | None = None,
    header: Sequence[str] = (),
) -> None:
    """Print ``data`` as JSON, or ``rows`` as a table under ``header``."""
    if as_json or rows is None:
        typer.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return
    table = [[str(h).upper() for h in header], *[[_cell(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list | dict):
        return json.dumps(value)[:40]
    return str(value)


def say(data: Any, as_json: bool, *lines: str) -> None:
    """Print ``data`` as JSON when asked, else the human ``lines``."""
    if as_json:
        emit(data, True)
        return
    for line in lines:
        typer.echo(line)


def write_summary(data: dict[str, Any], kind: str, as_json: bool, toggle: bool = False) -> None:
    """One line about a write: the document's state, versions and who acknowledged it.

    ``toggle``: the write only set ``on``, so an unchanged one is "already on/off".
    """
    if as_json:
        emit(data, True)
        return
    doc = data.get(kind)
    state = (
        "deleted"
        if doc is None
        else ("on" if doc.get("on") else "off")
        if kind == "flag"
        else "saved"
    )
    line = (
        f"{kind} {doc.get('key') if doc else ''} {state}: version {data['version']}, "
        f"environment version {data['env_version']}"
    )
    prop = data.get("propagation")
    if data.get("changed") is False:
        line += f"; unchanged (already {state if toggle else 'as asked'}), nothing sent"
    elif prop and not prop.get("connected"):
        line += "; no clients connected"
    elif prop:
        line += (
            f"; {prop.get('acknowledged')}/{prop.get('connected')} clients acknowledged"
            f" (p99 {prop.get('p99_ms')} ms{'' if prop.get('complete') else ', incomplete'})"
        )
    typer.echo(line.replace(f"{kind}  ", f"{kind} "))
