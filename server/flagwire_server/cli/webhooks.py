"""``flagwire webhooks ...``: create, list, show, update and delete webhooks; their deliveries.

``create`` prints the signing secret, which the server shows only then
(docs/webhooks.md says how a receiver verifies it).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from flagwire_server.cli.http import Api, cli_errors, fail
from flagwire_server.cli.options import DEFAULT_URL, Env, Json, Key, Url
from flagwire_server.cli.output import emit, say

__all__ = ["webhooks"]

webhooks = typer.Typer(
    help="Outgoing webhooks of one environment (docs/webhooks.md).", no_args_is_help=True
)

Events = Annotated[
    list[str] | None,
    typer.Option(
        "--event",
        help="An event to send (flag.changed, segment.changed, schedule.executed, plan.*, *);"
        " repeat for more.",
    ),
]
Description = Annotated[str | None, typer.Option("--description", help="What it is for.")]


def _base(env: str) -> str:
    return f"/environments/{env}/webhooks"


def _line(h: dict[str, Any]) -> str:
    state = "" if h.get("enabled", True) else " (disabled)"
    return f"{h['id']} {h['url']} [{', '.join(h['events'])}]{state}"


@webhooks.command("create")
def webhooks_create(
    url_: Annotated[str, typer.Argument(metavar="URL", help="The receiver: http or https.")],
    event: Events = None,
    description: Description = None,
    env: Env = "production",
    url: Url = DEFAULT_URL,
    admin_key: Key = "",
    as_json: Json = False,
) -> None:
    """Create a webhook and print its signing secret (shown this once)."""
    with cli_errors():
        if not event:
            fail("give at least one --event (or --event '*')")
        body: dict[str, Any] = {"url": url_, "events": event}
        if description is not None:
            body["description"] = description
        data = Api(url, admin_key).call("POST", _base(env), body=body)
        say(
            data,
            as_json,
            f"created {_line(data['webhook'])}",
            f"signing secret (shown once, store it now): {data['secret']}",
        )


@webhooks.command("list")
def webhooks_list(
    env: Env = "production", url: Url = DEFAULT_URL, admin_key: Key = "", as_json: Json = False
) -> None:
    """The environment's webhooks."""
    with cli_errors():
        data = Api(url, admin_key).call("GET", _base(env))
        emit(
            data,
            as_json,
            [
                (h["id"], h["url"], ",".join(h["events"]), h.get("enabled", True))
                for h in data["webhooks"]
            ],
            ("id", "url", "events", "enabled"),
        )


@webhooks.command("show")
def webhooks_show(
    webhook_id: str, env: Env = "production", url: Url = DEFAULT_URL, admin_key: Key = ""
) -> None:
    """Print one webhook (JSON; never its secret)."""
    with cli_errors():
        emit(Api(url, admin_key).call("GET", f"{_base(env)}/{webhook_id}"), True)


@webhooks.command("update")
def webhooks_update(
    webhook_id: str,
    to: Annotated[str | None, typer.Option("--to", help="A new receiver URL.")] = None,
    event: Events = None,
    description: Description = None,
    enable: Annotated[
        bool | None, typer.Option("--enable/--disable", help="Send events, or stop.")
    ] = None,
    env: Env = "production",
    url: Url = DEFAULT_URL,
    admin_key: Key = "",
    as_json: Json = False,
) -> None:
    """Change a webhook's URL, events (--event replaces them all), description or state."""
    body: dict[str, Any] = {}
    for name, value in (("url", to), ("events", event), ("description", description)):
        if value:
            body[name] = value
    if enable is not None:
        body["enabled"] = enable
    with cli_errors():
        if not body:
            fail("nothing to change: give --to, --event, --description or --enable/--disable")
        data = Api(url, admin_key).call("PATCH", f"{_base(env)}/{webhook_id}", body=body)
        say(data, as_json, f"updated {_line(data)}")


@webhooks.command("rotate-secret")
def webhooks_rotate_secret(
    webhook_id: str,
    env: Env = "production",
    url: Url = DEFAULT_URL,
    admin_key: Key = "",
    as_json: Json = False,
) -> None:
    """Give a webhook a new signing secret and print it (shown this once)."""
    with cli_errors():
        data = Api(url, admin_key).call("POST", f"{_base(env)}/{webhook_id}/secret")
        say(data, as_json, f"new signing secret for {webhook_id} (shown once): {data['secret']}")


@webhooks.command("delete")
def webhooks_delete(
    webhook_id: str,
    env: Env = "production",
    url: Url = DEFAULT_URL,
    admin_key: Key = "",
    as_json: Json = False,
) -> None:
    """Delete a webhook and its delivery log."""
    with cli_errors():
        data = Api(url, admin_key).call("DELETE", f"{_base(env)}/{webhook_id}")
        say(data, as_json, f"deleted {_line(data['webhook'])}")


@webhooks.command("deliveries")
def webhooks_deliveries(
    webhook_id: str,
    limit: Annotated[int, typer.Option("--limit", help="How many, newest first (1-50).")] = 20,
    env: Env = "production",
    url: Url = DEFAULT_URL,
    admin_key: Key = "",
    as_json: Json = False,
) -> None:
    """The webhook's last delivery attempts: status, duration, outcome."""
    with cli_errors():
        data = Api(url, admin_key).call(
            "GET", f"{_base(env)}/{webhook_id}/deliveries", params={"limit": limit}
        )
        emit(
            data,
            as_json,
            [
                (
                    d["at"],
                    d["event"],
                    d["attempt"],
                    d.get("status") if d.get("status") is not None else "-",
                    f"{d.get('duration_ms', 0):.0f} ms",
                    d["outcome"],
                    d.get("error") or d.get("response", "")[:60],
                )
                for d in data["deliveries"]
            ],
            ("at", "event", "attempt", "status", "took", "outcome", "answer"),
        )
