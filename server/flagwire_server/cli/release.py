"""``flagwire release ...``: start a release plan for a flag, see it, pause, resume, roll back.

A flag has at most one active plan, so the commands other than ``start`` take
the flag's key and act on its active plan (or, for ``status``, its latest).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from flagwire_server.cli.files import load_file
from flagwire_server.cli.http import Api, cli_errors, fail
from flagwire_server.cli.options import DEFAULT_URL, Env, Json, Key, Url
from flagwire_server.cli.output import emit

__all__ = ["release"]

release = typer.Typer(help="Staged release plans of one environment's flags.", no_args_is_help=True)


def _latest(api: Api, env: str, flag: str, *, active: bool) -> dict[str, Any]:
    plans = api.call("GET", f"/environments/{env}/releases", params={"flag": flag})["plans"]
    if active:
        plans = [p for p in plans if p["status"] in ("running", "paused")]
    if not plans:
        fail(f"flag {flag!r} has no {'active ' if active else ''}release plan in {env!r}")
    return dict(plans[0])


def _guard(g: dict[str, Any]) -> str:
    """One guard in words: ``errors: rate of error (z-test), then rollback``."""
    if g.get("kind") == "event":
        test = "mean of {e} (Welch)" if g.get("stat") == "mean" else "rate of {e} (z-test)"
        what = test.format(e=g["event"]) + f", min {g['min_samples']}"
    else:
        bound = f"<= {g['max']:g}" if "max" in g else f">= {g['min']:g}"
        what = f"{g['query']} {bound}"
    return f"{g['name']}: {what}, then {g['action']}"


def _show(plan: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit(plan, True)
        return
    typer.echo(f"{plan['id']} {plan['flag']}: {plan['status']} {plan.get('reason') or ''}".rstrip())
    for g in plan.get("guards") or []:
        typer.echo(f"   guard {_guard(g)}")
    for i, st in enumerate(plan["stages"]):
        mark = ">" if i == plan["stage"] and plan["status"] in ("running", "paused") else " "
        segs = f" segments {', '.join(st['segments'])}" if st["segments"] else ""
        gate = ", approval" if st["approval"] else ""
        typer.echo(
            f" {mark} {i + 1}. {st['name']}: {st['percent']:g}%{segs}, hold {st['hold']:g} s{gate}"
        )
        for g in st.get("guards") or []:
            typer.echo(f"        guard {_guard(g)}")
    for ev in plan.get("events", [])[-10:]:
        line = f"   {ev['at']} {ev['what']} by {ev['by']} {ev.get('summary', '')}".rstrip()
        if "detection_to_applied_ms" in ev:
            line += f" ({ev['detection_to_applied_ms']:g} ms from detection)"
        if ev.get("reason"):
            line += f", because {ev['reason']}"
        typer.echo(line)


@release.command("start")
def release_start(
    flag: str,
    variation: Annotated[
        int | None,
        typer.Option(
            "--variation",
            help="The new variation's index (default: of two, the one not served now).",
        ),
    ] = None,
    template: Annotated[
        str | None, typer.Option("--template", help="A template (standard, or your own).")
    ] = None,
    stages: Annotated[
        Path | None, typer.Option("--stages", help="A JSON or YAML file: a list of stages.")
    ] = None,
    guards: Annotated[
        Path | None,
        typer.Option("--guards", help="A JSON or YAML file: the plan's guards (docs/releases.md)."),
    ] = None,
    env: Env = "production",
    url: Url = DEFAULT_URL,
    admin_key: Key = "",
    as_json: Json = False,
) -> None:
    """Start a plan: give --template or --stages (the first stage is written at once)."""
    with cli_errors():
        if (template is None) == (stages is None):
            fail("give exactly one of --template and --stages")
        body: dict[str, Any] = {"flag": flag}
        if variation is not None:
            body["variation"] = variation
        if template is not None:
            body["template"] = template
        else:
            assert stages is not None
            body["stages"] = load_file(stages)
        if guards is not None:
            body["guards"] = load_file(guards)
        _show(Api(url, admin_key).call("POST", f"/environments/{env}/releases", body=body), as_json)


@release.command("status")
def release_status(
    flag: str,
    env: Env = "production",
    url: Url = DEFAULT_URL,
    admin_key: Key = "",
    as_json: Json = False,
) -> None:
    """The flag's latest plan: its stages, where it is, its last events."""
    with cli_errors():
        _show(_latest(Api(url, admin_key), env, flag, active=False), as_json)


def _operate(flag: str, op: str, env: str, url: str, admin_key: str, as_json: bool) -> None:
    with cli_errors():
        api = Api(url, admin_key)
        plan = _latest(api, env, flag, active=True)
        _show(api.call("POST", f"/environments/{env}/releases/{plan['id']}/{op}"), as_json)


def _command(op: str, doc: str) -> None:
    def command(
        flag: str,
        env: Env = "production",
        url: Url = DEFAULT_URL,
        admin_key: Key = "",
        as_json: Json = False,
    ) -> None:
        _operate(flag, op, env, url, admin_key, as_json)

    command.__doc__ = doc
    release.command(op)(command)


for _op, _doc in (
    ("pause", "Stop advancing the flag's active plan (nobody's variation changes)."),
    ("resume", "Continue a paused plan where its hold stopped."),
    ("advance", "Write the next stage now."),
    ("approve", "Let a stage that needs approval advance when its hold ends."),
    ("rollback", "Write the flag as it was before the plan, confirmed by the clients."),
    ("abandon", "End the plan and leave the flag as it is."),
):
    _command(_op, _doc)
