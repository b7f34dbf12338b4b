"""``flagwire flags ...``: list, get, create, on/off, rollout, targets, delete, history, restore.

The YAML/JSON document format is in docs/cli.md.

Why the read-modify-write commands send ``If-Match``: ``rollout`` and
``targets`` change part of an array the merge patch would replace whole, so
they read the flag, change it, and write it back only if nobody changed it in
between (a 409 then says so, and running the command again is safe).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from flagwire.core.limits import WEIGHT_TOTAL
from flagwire_server.cli.documents import add_create, add_delete_history_restore, write_document
from flagwire_server.cli.http import Api, cli_errors, fail
from flagwire_server.cli.options import DEFAULT_URL, Env, Json, Key, Url, Wait
from flagwire_server.cli.output import emit

__all__ = ["flags"]

flags = typer.Typer(help="Feature flags of one environment.", no_args_is_help=True)


@flags.command("list")
def flags_list(
    env: Env = "production",
    tag: Annotated[str | None, typer.Option()] = None,
    q: Annotated[str | None, typer.Option(help="search key/name/description")] = None,
    url: Url = DEFAULT_URL,
    admin_key: Key = "",
    as_json: Json = False,
) -> None:
    """List the flags of an environment."""
    with cli_errors():
        data = Api(url, admin_key).call(
            "GET", f"/environments/{env}/flags", params={"tag": tag, "q": q}
        )
        emit(
            data,
            as_json,
            [
                (
                    f["key"],
                    f.get("on"),
                    f.get("version"),
                    _serves(f),
                    ",".join(f.get("tags") or []),
                    f.get("updated_by"),
                )
                for f in data["flags"]
            ],
            ("key", "state", "version", "serves", "tags", "updated by"),
        )


@flags.command("get")
def flags_get(
    key: str,
    env: Env = "production",
    url: Url = DEFAULT_URL,
    admin_key: Key = "",
    as_json: Json = False,
) -> None:
    """Show one flag: what it serves to whom; its whole document with --json."""
    with cli_errors():
        doc = Api(url, admin_key).call("GET", f"/environments/{env}/flags/{key}")
        if as_json:
            emit(doc, True)
        else:
            for line in _describe(doc):
                typer.echo(line)


add_create(flags, "flag")


def _add_toggle(name: str, on: bool, doc: str) -> None:
    """``on`` and ``off``: one command each, told apart only by the state they write."""

    def toggle(
        key: str,
        env: Env = "production",
        wait: Wait = None,
        url: Url = DEFAULT_URL,
        admin_key: Key = "",
        as_json: Json = False,
    ) -> None:
        with cli_errors():
            write_document(Api(url, admin_key), "flag", env, key, {"on": on}, wait, as_json)

    toggle.__doc__ = doc
    flags.command(name)(toggle)


_add_toggle("on", True, "Turn a flag on.")
_add_toggle("off", False, "Turn a flag off (the kill switch).")


@flags.command("client-side")
def flags_client_side(
    key: str,
    visible: Annotated[
        bool,
        typer.Option(
            "--visible/--hidden",
            help="whether client-side keys (web pages, OFREP) may evaluate the flag",
        ),
    ] = True,
    env: Env = "production",
    wait: Wait = None,
    url: Url = DEFAULT_URL,
    admin_key: Key = "",
    as_json: Json = False,
) -> None:
    """Let client-side keys evaluate a flag (--visible), or stop them (--hidden)."""
    with cli_errors():
        body = {"client_side": visible}
        write_document(Api(url, admin_key), "flag", env, key, body, wait, as_json)


@flags.command("rollout")
def flags_rollout(
    key: str,
    percent: float,
    env: Env = "production",
    variation: Annotated[
        int | None,
        typer.Option(help="variation served to PERCENT (default: the one that is true, else 0)"),
    ] = None,
    rest: Annotated[int | None, typer.Option(help="variation served to the others")] = None,
    wait: Wait = None,
    url: Url = DEFAULT_URL,
    admin_key: Key = "",
    as_json: Json = False,
) -> None:
    """Serve a variation to PERCENT % of contexts (the fallthrough), the rest another."""
    with cli_errors():
        if not 0 <= percent <= 100:
            fail("PERCENT must be between 0 and 100")
        api = Api(url, admin_key)
        doc = api.call("GET", f"/environments/{env}/flags/{key}")
        variations = doc.get("variations") or []
        if len(variations) < 2:
            fail(f"flag {key} has fewer than two variations")
        chosen = (
            variation
            if variation is not None
            else (variations.index(True) if True in variations else 0)
        )
        other = rest if rest is not None else next(i for i in range(len(variations)) if i != chosen)
        for name, idx in (("--variation", chosen), ("--rest", other)):
            if not 0 <= idx < len(variations):
                fail(f"{name} {idx} is not a variation index of {key}")
        weight = round(percent * 1000)
        slots = [
            {"variation": chosen, "weight": weight},
            {"variation": other, "weight": WEIGHT_TOTAL - weight},
        ]
        bucket_by = ((doc.get("fallthrough") or {}).get("rollout") or {}).get("bucket_by", "key")
        patch = {
            "fallthrough": {
                "variation": None,
                "rollout": {"variations": slots, "bucket_by": bucket_by},
            }
        }
        data = write_document(api, "flag", env, key, patch, wait, as_json, version=doc["version"])
        if not as_json and not data["flag"].get("on"):
            typer.echo(f"note: {key} is off; `flagwire flags on {key}` to serve the rollout")


@flags.command("targets")
def flags_targets(
    key: str,
    variation: int,
    values: list[str],
    env: Env = "production",
    wait: Wait = None,
    url: Url = DEFAULT_URL,
    admin_key: Key = "",
    as_json: Json = False,
) -> None:
    """Serve VARIATION to exactly these context keys (replaces that variation's targets)."""
    with cli_errors():
        api = Api(url, admin_key)
        doc = api.call("GET", f"/environments/{env}/flags/{key}")
        targets = [t for t in doc.get("targets") or [] if t.get("variation") != variation]
        moved = set(values)
        targets = [
            {**t, "values": [v for v in t.get("values", []) if v not in moved]} for t in targets
        ]
        targets = [t for t in targets if t["values"]]
        if values:
            targets.append({"variation": variation, "values": list(dict.fromkeys(values))})
        body = {"targets": targets}
        write_document(api, "flag", env, key, body, wait, as_json, version=doc["version"])


add_delete_history_restore(flags, "flag", lambda d: (d.get("on"), _serves(d)), ("state", "serves"))


def _serves(doc: dict[str, Any]) -> str:
    return _serve(doc.get("variations") or [], doc.get("fallthrough") or {})


def _serve(variations: list[Any], spec: dict[str, Any]) -> str:
    """What a fallthrough or a rule serves: one variation, or a rollout's shares."""
    if spec.get("rollout"):
        parts = [
            f"{_val(variations, s.get('variation'))}:{s.get('weight', 0) / 1000:g}%"
            for s in (spec["rollout"].get("variations") or [])
        ]
        return " ".join(parts)
    return _val(variations, spec.get("variation"))


def _describe(doc: dict[str, Any]) -> list[str]:
    """A flag for people: state, then who gets what, in the order the evaluator decides."""
    variations = doc.get("variations") or []
    name = f" ({doc['name']})" if doc.get("name") else ""
    lines = [f"flag {doc.get('key')}{name}: {'on' if doc.get('on') else 'off'}"]
    fields: list[tuple[str, str]] = []
    if doc.get("description"):
        fields.append(("description", str(doc["description"])))
    if doc.get("tags"):
        fields.append(("tags", ", ".join(map(str, doc["tags"]))))
    if doc.get("client_side"):
        fields.append(("client-side", "visible to client-side keys (OFREP)"))
    fields.append(
        ("variations", "  ".join(f"{i}: {json.dumps(v)}" for i, v in enumerate(variations)))
    )
    off = doc.get("off_variation")
    fields.append(("when off", "the caller's default" if off is None else _val(variations, off)))
    for p in doc.get("prerequisites") or []:
        fields.append(("prerequisite", f"{p.get('key')} serves variation {p.get('variation')}"))
    for t in doc.get("targets") or []:
        values = ", ".join(map(str, t.get("values") or []))
        fields.append(("target", f"{values} -> {_val(variations, t.get('variation'))}"))
    for i, rule in enumerate(doc.get("rules") or []):
        clauses = " and ".join(_clause(c) for c in rule.get("clauses") or []) or "always"
        fields.append((f"rule {i}", f"if {clauses} -> {_serve(variations, rule)}"))
    fields.append(("otherwise", _serves(doc)))
    fields.append(
        (
            "version",
            f"{doc.get('version')}, updated {doc.get('updated_at', '?')} "
            f"by {doc.get('updated_by', '?')}",
        )
    )
    width = max(len(label) for label, _ in fields)
    lines += [f"  {label.ljust(width)}  {value}" for label, value in fields]
    return lines


def _clause(clause: dict[str, Any]) -> str:
    values = ", ".join(json.dumps(v) for v in clause.get("values") or [])
    negate = "not " if clause.get("negate") else ""
    return f"{clause.get('attribute')} {negate}{clause.get('op')} [{values}]"


def _val(variations: list[Any], idx: Any) -> str:
    if isinstance(idx, int) and 0 <= idx < len(variations):
        v = variations[idx]
        return ("true" if v else "false") if isinstance(v, bool) else str(v)[:20]
    return "?"
