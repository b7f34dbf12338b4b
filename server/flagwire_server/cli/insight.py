"""``flagwire flags insight KEY``, ``flagwire clients``, ``flagwire flags stale``: fleet insight.

They read what clients report (``docs/insight.md``) through the REST API and
print it as tables (``--json`` for the answers as they are).  The command
table is in ``main.py``.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import typer

from flagwire_server.cli.http import Api, cli_errors
from flagwire_server.cli.options import DEFAULT_URL, Env, Json, Key, Url
from flagwire_server.cli.output import emit

__all__ = ["clients", "flags_insight", "flags_stale"]


def _when(ms: int | None) -> str:
    if ms is None:
        return "never"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _ago(ms: int | None) -> str:
    if ms is None:
        return "never"
    seconds = max(0, int(dt.datetime.now(dt.UTC).timestamp() - ms / 1000))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def flags_insight(
    key: str,
    env: Env = "production",
    window: Annotated[int, typer.Option(help="seconds back from now")] = 86_400,
    step: Annotated[int | None, typer.Option(help="seconds per bucket")] = None,
    url: Url = DEFAULT_URL,
    admin_key: Key = "",
    as_json: Json = False,
) -> None:
    """What clients evaluated of one flag: per variation, contexts, events, applications."""
    with cli_errors():
        data = Api(url, admin_key).call(
            "GET",
            f"/environments/{env}/flags/{key}/insight",
            params={"window": window, "step": step},
        )
        rows: list[tuple[Any, ...]] = []
        for v in data["variations"]:
            events = ", ".join(
                f"{name}: {e['count']} (sum {e['sum']:g})" for name, e in v["events"].items()
            )
            reasons = ", ".join(f"{r} {n}" for r, n in sorted(v["reasons"].items()))
            label = "default" if v["variation"] == -1 else v["variation"]
            rows.append(
                (label, v.get("value"), v["evaluations"], v["contexts"], reasons, events or "-")
            )
        emit(data, as_json, rows, ("variation", "value", "evals", "contexts", "reasons", "events"))
        if not as_json:
            apps = ", ".join(a["app"] or "(unnamed)" for a in data["applications"]) or "none"
            typer.echo(f"last evaluated: {_ago(data['last_evaluated'])}; applications: {apps}")


def clients(
    env: Env = "production",
    url: Url = DEFAULT_URL,
    admin_key: Key = "",
    as_json: Json = False,
) -> None:
    """The SDK instances streaming an environment, their versions and lag."""
    with cli_errors():
        data = Api(url, admin_key).call("GET", f"/environments/{env}/clients")
        rows = [
            (
                c["app"] or "-",
                c["instance"],
                f"{c['sdk']} {c.get('sdk_version', '')}".strip(),
                c.get("host", ""),
                _when(c["connected_since"]),
                c["applied_version"],
                c["lag"],
            )
            for c in data["clients"]
        ]
        emit(
            data,
            as_json,
            rows,
            ("app", "instance", "sdk", "host", "connected since", "applied", "lag"),
        )


def flags_stale(
    env: Env = "production",
    days: Annotated[int, typer.Option(help="the N of 'for N days'")] = 7,
    all_flags: Annotated[
        bool, typer.Option("--all", help="also flags with nothing to say")
    ] = False,
    url: Url = DEFAULT_URL,
    admin_key: Key = "",
    as_json: Json = False,
) -> None:
    """The cleanup report: flags not evaluated, serving one variation, unchanged or blocked."""
    with cli_errors():
        data = Api(url, admin_key).call(
            "GET", f"/environments/{env}/cleanup", params={"days": days}
        )
        rows = [
            (
                f["key"],
                "on" if f["on"] else "off",
                _ago(f["last_evaluated"]),
                ",".join(map(str, f["served"])) or "-",
                ", ".join(f["reasons"]) or "-",
                ", ".join(f["blocked_by"]) or "-",
            )
            for f in data["flags"]
            if all_flags or f["reasons"]
        ]
        emit(
            data,
            as_json,
            rows,
            ("key", "state", "last evaluated", "served", "why", "blocked by"),
        )
