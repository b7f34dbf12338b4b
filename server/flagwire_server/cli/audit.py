"""``flagwire audit``: an environment's audit log, or the instance-wide trail.

Why one command: "who did what" is one question.  By default it shows an
environment's flag and segment changes (``--env``, as before); ``--instance``
shows what belongs to no environment: environments created and deleted, API
keys created and revoked, console sign-ins (also failed ones) and sign-outs,
and a changed ``FLAGWIRE_ADMIN_KEY`` — each with who, when and from which
address.  The command table is in ``main.py``.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from flagwire_server.cli.http import Api, cli_errors
from flagwire_server.cli.options import DEFAULT_URL, Env, Json, Key, Url
from flagwire_server.cli.output import emit

__all__ = ["audit"]


def _what(e: dict[str, Any]) -> str:
    detail = e.get("detail") or {}
    extra = [str(detail[k]) for k in ("name", "reason") if detail.get(k)]
    return " ".join([e["kind"], e["key"], *(f"({x})" for x in extra)]).strip()


def audit(
    env: Env = "production",
    instance: Annotated[
        bool,
        typer.Option(
            "--instance",
            help="the instance-wide trail (environments, keys, sign-ins, admin key) "
            "instead of an environment's log",
        ),
    ] = False,
    limit: Annotated[int, typer.Option()] = 20,
    before: Annotated[str | None, typer.Option(help="cursor from the last page")] = None,
    url: Url = DEFAULT_URL,
    admin_key: Key = "",
    as_json: Json = False,
) -> None:
    """Show an audit log, newest first: an environment's, or with --instance the server's."""
    params = {"limit": limit, "before": before}
    with cli_errors():
        api = Api(url, admin_key)
        if instance:
            data = api.call("GET", "/audit", params=params)
            rows: list[tuple[Any, ...]] = [
                (e["at"], e["actor"], e["action"], _what(e), e["address"]) for e in data["entries"]
            ]
            emit(data, as_json, rows, ("at", "actor", "action", "what", "from"))
        else:
            data = api.call("GET", f"/environments/{env}/audit", params=params)
            rows = [
                (
                    e["at"],
                    e["actor"],
                    e["action"],
                    e["kind"],
                    e["key"],
                    e["flag_version"],
                    e["version"],
                )
                for e in data["entries"]
            ]
            emit(data, as_json, rows, ("at", "actor", "action", "kind", "key", "ver", "env ver"))
        if data.get("next") and not as_json:
            typer.echo(f"more: --before {data['next']}")
