"""``flagwire schedule ...``: schedule a write to a flag for a time; list, show, edit, cancel.

The change is checked by the server when it is scheduled (a change that would
be an invalid write is refused now, not at its due time) and executed by
whichever server of the fleet claims it first (docs/releases.md).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from flagwire_server.cli.http import Api, cli_errors, fail
from flagwire_server.cli.options import DEFAULT_URL, Env, Json, Key, Url
from flagwire_server.cli.output import emit, say

__all__ = ["schedule"]

schedule = typer.Typer(
    help="Scheduled changes to the flags of one environment.", no_args_is_help=True
)

At = Annotated[
    str,
    typer.Option("--at", help="When: an RFC 3339 time with an offset (2027-01-15T09:00:00Z)."),
]
IfChanged = Annotated[
    str | None,
    typer.Option(
        "--if-changed",
        help="If the flag was edited since: apply, skip or fail [server default: fail].",
    ),
]


def _due(at: str) -> Any:
    try:
        return float(at)
    except ValueError:
        return at


def _line(c: dict[str, Any]) -> str:
    what = c.get("summary") or c.get("reason") or ""
    return f"{c['id']} {c['flag']} {c['action']} at {c['due_at']}: {c['status']} {what}".rstrip()


@schedule.command("add")
def schedule_add(
    flag: str,
    at: At,
    patch: Annotated[
        str | None, typer.Option("--patch", help="A JSON merge patch, e.g. '{\"on\": false}'.")
    ] = None,
    rollout: Annotated[
        str | None, typer.Option("--rollout", help="The new fallthrough (JSON).")
    ] = None,
    restore: Annotated[
        int | None, typer.Option("--restore", help="Restore this version of the flag.")
    ] = None,
    if_changed: IfChanged = None,
    env: Env = "production",
    url: Url = DEFAULT_URL,
    admin_key: Key = "",
    as_json: Json = False,
) -> None:
    """Schedule one change: exactly one of --patch, --rollout, --restore."""
    with cli_errors():
        given = [o for o in (patch, rollout, restore) if o is not None]
        if len(given) != 1:
            fail("give exactly one of --patch, --rollout and --restore")
        body: dict[str, Any] = {"flag": flag, "due_at": _due(at)}
        try:
            if patch is not None:
                body.update(action="patch", change=json.loads(patch))
            elif rollout is not None:
                body.update(action="rollout", change=json.loads(rollout))
            else:
                body.update(action="restore", version=restore)
        except json.JSONDecodeError as exc:
            fail(f"not JSON: {exc}")
        if if_changed is not None:
            body["if_changed"] = if_changed
        data = Api(url, admin_key).call("POST", f"/environments/{env}/schedule", body=body)
        say(data, as_json, f"scheduled {_line(data)}")


@schedule.command("list")
def schedule_list(
    flag: Annotated[str | None, typer.Option("--flag", help="Only this flag's changes.")] = None,
    status: Annotated[str | None, typer.Option("--status", help="Only this status.")] = None,
    env: Env = "production",
    url: Url = DEFAULT_URL,
    admin_key: Key = "",
    as_json: Json = False,
) -> None:
    """Scheduled changes by due time, with their outcome once executed."""
    params = {k: v for k, v in (("flag", flag), ("status", status)) if v}
    with cli_errors():
        data = Api(url, admin_key).call("GET", f"/environments/{env}/schedule", params=params)
        emit(
            data,
            as_json,
            [
                (
                    c["id"],
                    c["flag"],
                    c["action"],
                    c["due_at"],
                    c["status"],
                    c.get("summary") or c.get("reason") or "",
                )
                for c in data["changes"]
            ],
            ("id", "flag", "action", "due", "status", "outcome"),
        )


@schedule.command("show")
def schedule_show(
    change_id: str, env: Env = "production", url: Url = DEFAULT_URL, admin_key: Key = ""
) -> None:
    """Print one scheduled change (JSON)."""
    with cli_errors():
        emit(Api(url, admin_key).call("GET", f"/environments/{env}/schedule/{change_id}"), True)


@schedule.command("edit")
def schedule_edit(
    change_id: str,
    at: Annotated[str | None, typer.Option("--at", help="A new due time.")] = None,
    if_changed: IfChanged = None,
    env: Env = "production",
    url: Url = DEFAULT_URL,
    admin_key: Key = "",
    as_json: Json = False,
) -> None:
    """Move a pending change or change its rule (the flag's version is read again)."""
    body: dict[str, Any] = {}
    if at is not None:
        body["due_at"] = _due(at)
    if if_changed is not None:
        body["if_changed"] = if_changed
    with cli_errors():
        if not body:
            fail("nothing to edit: give --at or --if-changed")
        data = Api(url, admin_key).call(
            "PATCH", f"/environments/{env}/schedule/{change_id}", body=body
        )
        say(data, as_json, f"edited {_line(data)}")


@schedule.command("cancel")
def schedule_cancel(
    change_id: str,
    env: Env = "production",
    url: Url = DEFAULT_URL,
    admin_key: Key = "",
    as_json: Json = False,
) -> None:
    """Cancel a pending change."""
    with cli_errors():
        data = Api(url, admin_key).call("DELETE", f"/environments/{env}/schedule/{change_id}")
        say(data, as_json, f"cancelled {_line(data)}")
