"""The ``flagwire`` admin subcommands against a real server.

Commands run in this process (``tests/support/cli.py``: the same code, HTTP
calls and output, without a Python start-up each); ``watch`` and ``serve --help``
run the installed console script as a process.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.builders import clause, flag, rollout, rule, segment, target
from tests.support.cli import run_cli
from tests.support.polling import poll_blocking
from tests.test_admin_support import VENV_BIN, Live, live_server

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def live(redis_url: str) -> Iterator[Live]:
    yield from live_server(redis_url)


def run(
    live: Live, *args: str, ok: bool = True, key: str | None = None, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    """``flagwire ARGS`` in this process (tests/support/cli.py) against ``live``."""
    return run_cli(live.url, live.admin_key if key is None else key, *args, ok=ok, timeout=timeout)


def run_json(live: Live, *args: str) -> Any:
    return json.loads(run(live, *args, "--json").stdout)


@pytest.fixture
def env(live: Live) -> str:
    name = f"c{uuid.uuid4().hex[:8]}"
    run(live, "envs", "create", name, "--name", "CLI env")
    return name


def test_envs_and_keys(live: Live, env: str) -> None:
    assert env in run(live, "envs", "list").stdout
    assert env in [e["key"] for e in run_json(live, "envs", "list")["environments"]]
    out = run(live, "keys", "create", "cli svc", "--env", env).stdout
    secret = out.strip().splitlines()[-1]
    assert secret.startswith("fw_sdk_")
    listed = run_json(live, "keys", "list")["keys"]
    rec = next(k for k in listed if k["name"] == "cli svc")
    table = run(live, "keys", "list").stdout
    assert rec["id"] in table
    assert secret not in table
    assert "revoked" in run(live, "keys", "revoke", rec["id"]).stdout
    gone = run(live, "keys", "revoke", rec["id"], ok=False)
    assert gone.returncode == 1
    assert gone.stderr.startswith("error: 404")
    assert len(gone.stderr.strip().splitlines()) == 1
    run(live, "envs", "delete", env)
    assert env not in run(live, "envs", "list").stdout


def test_yaml_on_field_is_the_flag_switch(live: Live, env: str, tmp_path: Path) -> None:
    # YAML 1.1 would read the key `on` as the boolean True.
    f = tmp_path / "g.yaml"
    f.write_text("key: gate\non: true\nvariations: [true, false]\nfallthrough: {variation: 0}\n")
    run(live, "flags", "create", str(f), "-e", env)
    assert run_json(live, "flags", "get", "gate", "-e", env)["on"] is True


def test_flags_commands(live: Live, env: str, tmp_path: Path) -> None:
    f = tmp_path / "f.yaml"
    f.write_text(
        "key: checkout\nvariations: [true, false]\nfallthrough: {variation: 1}\ntags: [payments]\n"
    )
    assert "flag checkout off: version 1" in run(live, "flags", "create", str(f), "-e", env).stdout
    assert "checkout" in run(live, "flags", "list", "-e", env, "--tag", "payments").stdout
    assert run_json(live, "flags", "get", "checkout", "-e", env)["version"] == 1
    assert "flag checkout on: version 2" in run(live, "flags", "on", "checkout", "-e", env).stdout
    out = run_json(live, "flags", "rollout", "checkout", "25", "-e", env)
    slots = out["flag"]["fallthrough"]["rollout"]["variations"]
    assert slots == [{"variation": 0, "weight": 25000}, {"variation": 1, "weight": 75000}]
    # The same rollout again: unchanged because it already is 25%, not "already on".
    again = run(live, "flags", "rollout", "checkout", "25", "-e", env).stdout
    assert "unchanged (already as asked), nothing sent" in again, again
    out = run_json(live, "flags", "targets", "checkout", "1", "alice", "bob", "-e", env)
    assert out["flag"]["targets"] == [{"variation": 1, "values": ["alice", "bob"]}]
    assert (
        run_json(live, "flags", "off", "checkout", "-e", env, "--wait", "0.1")["flag"]["on"]
        is False
    )
    # A write that changes nothing says so, rather than echoing a version as if it moved.
    again = run(live, "flags", "off", "checkout", "-e", env, "--wait", "0.1").stdout
    assert "unchanged (already off), nothing sent" in again
    hist = run(live, "flags", "history", "checkout", "-e", env).stdout
    assert "current" in hist
    assert run_json(live, "flags", "restore", "checkout", "2", "-e", env)["version"] == 6
    audit = run(live, "audit", "-e", env).stdout
    assert "test admin" in audit
    assert "restore" in audit
    assert "deleted" in run(live, "flags", "delete", "checkout", "-e", env).stdout


def test_flags_get_is_readable_and_json_on_request(live: Live, env: str) -> None:
    doc = flag(
        "pricing",
        variations=["a", "b", "c"],
        fallthrough=rollout(25, 75),
        name="Pricing page",
        tags=["web"],
        targets=[target(2, "alice", "bob")],
        rules=[rule(clause("email", "ends_with", "@example.com"), variation=1)],
    )
    live.api.post(f"/environments/{env}/flags", json=doc).raise_for_status()
    text = run(live, "flags", "get", "pricing", "-e", env).stdout
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    lines = text.splitlines()
    assert lines[0] == "flag pricing (Pricing page): on"
    assert any("tags" in line and "web" in line for line in lines), text
    assert any(line.split() == ["target", "alice,", "bob", "->", "c"] for line in lines), text
    assert any('email ends_with ["@example.com"] -> b' in line for line in lines), text
    assert any(line.split() == ["otherwise", "a:25%", "b:75%"] for line in lines), text
    assert any(line.split()[:2] == ["version", "1,"] and "by test admin" in line for line in lines)
    got = run_json(live, "flags", "get", "pricing", "-e", env)
    assert got["key"] == "pricing"
    assert got["targets"] == [{"variation": 2, "values": ["alice", "bob"]}]


def test_a_command_closes_its_connections(live: Live, env: str) -> None:
    # A command run inside a longer-lived process (here: the test's) leaves no socket open:
    # one left for the collector is a ResourceWarning at some later, unrelated moment.
    gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        run(live, "envs", "list")
        assert run(live, "flags", "get", "nope", "-e", env, ok=False).returncode == 1
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leaks, leaks


def test_errors_are_one_line(live: Live, env: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(flag("x", rules=[{"clauses": [], "variation": 9}])))
    r = run(live, "flags", "create", str(bad), "-e", env, ok=False)
    assert r.returncode == 1
    assert r.stderr.startswith("error: 422")
    assert "rules[0]" in r.stderr
    assert "Traceback" not in r.stderr
    r = run(live, "flags", "get", "nope", "-e", env, ok=False)
    assert r.stderr.startswith("error: 404")
    r = run(live, "envs", "list", ok=False, key="fw_admin_wrong")
    assert r.stderr.startswith("error: 401")
    r = run(live, "envs", "list", "--url", "http://127.0.0.1:9", ok=False)
    assert r.stderr.startswith("error: cannot reach")
    (tmp_path / "broken.yaml").write_text("key: [\n")
    r = run(live, "flags", "create", str(tmp_path / "broken.yaml"), "-e", env, ok=False)
    assert "not valid YAML" in r.stderr
    for proc in (r,):
        assert len(proc.stderr.strip().splitlines()) == 1


def test_file_errors_name_line_and_column(live: Live, env: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("key: gate\nvariations: [true, false]\nfallthrough: {variation: 0\non: true\n")
    r = run(live, "flags", "create", str(bad), "-e", env, ok=False)
    assert r.returncode == 1
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"error: {bad}:4:"), line
    assert "not valid YAML" in line
    tab = tmp_path / "tab.yaml"
    tab.write_text("key: gate\nvariations:\n\t- true\n")
    (line,) = run(live, "flags", "create", str(tab), "-e", env, ok=False).stderr.splitlines()
    assert line.startswith(f"error: {tab}:3:1: not valid YAML"), line
    js = tmp_path / "bad.json"
    js.write_text('{\n  "key": "gate",\n  "on": tru\n}\n')
    (line,) = run(live, "flags", "create", str(js), "-e", env, ok=False).stderr.splitlines()
    assert line.startswith(f"error: {js}:3:"), line
    assert "not valid JSON" in line


def test_segments_commands(live: Live, env: str, tmp_path: Path) -> None:
    f = tmp_path / "staff.yaml"
    f.write_text(
        "key: staff\n"
        "included: [alice]\n"
        "excluded: [mallory]\n"
        "rules:\n"
        "  - clauses:\n"
        "      - {attribute: email, op: ends_with, values: ['@example.com']}\n"
    )
    out = run(live, "segments", "create", str(f), "-e", env).stdout
    assert "segment staff saved: version 1" in out
    again = run(live, "segments", "create", str(f), "-e", env, ok=False)
    assert again.stderr.startswith("error: 409")
    table = run(live, "segments", "list", "-e", env).stdout
    header = ["KEY", "VERSION", "INCLUDED", "EXCLUDED", "RULES", "UPDATED", "BY"]
    assert table.splitlines()[0].split() == header
    assert table.splitlines()[1].split()[:5] == ["staff", "1", "1", "1", "1"]
    assert [s["key"] for s in run_json(live, "segments", "list", "-e", env)["segments"]] == [
        "staff"
    ]
    doc = json.loads(run(live, "segments", "get", "staff", "-e", env).stdout)
    assert doc["included"] == ["alice"]
    assert doc["rules"][0]["clauses"][0]["values"] == ["@example.com"]

    out = run_json(live, "segments", "include", "staff", "bob", "mallory", "-e", env)
    assert out["segment"]["included"] == ["alice", "bob", "mallory"]
    assert out["segment"]["excluded"] == []
    out = run_json(live, "segments", "exclude", "staff", "alice", "-e", env, "--wait", "0.1")
    assert out["segment"]["included"] == ["bob", "mallory"]
    assert out["segment"]["excluded"] == ["alice"]
    assert out["version"] == 3

    hist = run(live, "segments", "history", "staff", "-e", env).stdout
    assert "current" in hist
    assert [
        v["version"] for v in run_json(live, "segments", "history", "staff", "-e", env)["versions"]
    ] == [3, 2, 1]
    restored = run_json(live, "segments", "restore", "staff", "1", "-e", env)
    assert restored["version"] == 4
    assert restored["segment"]["included"] == ["alice"]
    audit = run_json(live, "audit", "-e", env)["entries"]
    assert {e["kind"] for e in audit} == {"segment"}
    assert "deleted" in run(live, "segments", "delete", "staff", "-e", env).stdout
    gone = run(live, "segments", "get", "staff", "-e", env, ok=False)
    assert gone.stderr.startswith("error: 404")


def test_command_modules_do_not_import_each_other() -> None:
    # The command table lives in cli/main.py; command modules share only the helpers.
    import ast

    import flagwire_server.cli as cli_pkg

    commands = {"admin", "ascode", "flags", "segments", "watch", "serve", "main"}
    for path in Path(cli_pkg.__file__).parent.glob("*.py"):
        if path.stem in ("main", "__init__"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                parts = node.module.split(".")
                imported = (
                    {parts[2]}
                    if parts[:2] == ["flagwire_server", "cli"] and len(parts) > 2
                    else set()
                )
                if parts == ["flagwire_server", "cli"]:
                    imported = {a.name for a in node.names}
                assert not imported & commands, f"{path.name} imports {imported & commands}"


def test_export_import_round_trip(live: Live, env: str, tmp_path: Path) -> None:
    api = live.api
    api.post(f"/environments/{env}/segments", json=segment("staff", included=["u1"]))
    api.post(f"/environments/{env}/flags", json=flag("a", tags=["t"]))
    api.post(f"/environments/{env}/flags", json=flag("b", on=False, variations=["x", "y"]))
    out = tmp_path / "export.json"
    run(live, "export", env, str(out))
    target = f"c{uuid.uuid4().hex[:8]}"
    run(live, "envs", "create", target)
    assert "imported 2 flags and 1 segments" in run(live, "import", target, str(out)).stdout

    def strip(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in d.items() if k not in ("created_at", "updated_at")} for d in docs]

    for plural in ("flags", "segments"):
        src = api.get(f"/environments/{env}/{plural}").json()[plural]
        dst = api.get(f"/environments/{target}/{plural}").json()[plural]
        assert strip(dst) == strip(src)
    # Importing again replaces (new versions), never fails on existing documents.
    run(live, "import", target, str(out))
    assert api.get(f"/environments/{target}/flags/a").json()["version"] == 2


def test_watch_follows_changes(live: Live, env: str) -> None:
    api = live.api
    proc = subprocess.Popen(
        [str(VENV_BIN / "flagwire"), "watch", env, "--count", "2"],
        env={**os.environ, "FLAGWIRE_URL": live.url, "FLAGWIRE_ADMIN_KEY": live.admin_key},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert f"connected to {env}" in first, first + (proc.stderr.read() if proc.stderr else "")
        time.sleep(0.1)
        api.post(f"/environments/{env}/flags", json=flag("w", on=False))
        api.patch(f"/environments/{env}/flags/w", json={"on": True})
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    lines = [first, *out.splitlines()]
    assert any("flag w off" in line for line in lines), lines
    assert any("flag w on" in line and "by test admin" in line for line in lines), lines
    refused = run(live, "watch", env, ok=False, key="fw_sdk_wrong")
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: the stream refused")


def test_watch_acknowledges_what_it_applied(live: Live, env: str) -> None:
    live.api.post(f"/environments/{env}/flags", json=flag("k")).raise_for_status()
    proc = subprocess.Popen(
        [str(VENV_BIN / "flagwire"), "watch", env, "--count", "1"],
        env={**os.environ, "FLAGWIRE_URL": live.url, "FLAGWIRE_ADMIN_KEY": live.admin_key},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        head = [proc.stdout.readline(), proc.stdout.readline()]
        assert head[1].endswith("snapshot: 1 flags, 0 segments\n"), head
        poll_blocking(  # the stream is counted across instances (~heartbeat)
            lambda: live.api.get(f"/environments/{env}").json()["connected"] >= 1,
            10,
            "the watch stream to be counted",
        )
        written = run_json(live, "flags", "off", "k", "-e", env, "--wait", "5")
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    prop = written["propagation"]
    assert (prop["connected"], prop["acknowledged"], prop["complete"]) == (1, 1, True)
    assert f"v{written['env_version']} flag k off (version 2, by test admin)" in out


DOCS = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
README = Path(__file__).resolve().parents[1] / "README.md"


def test_documented_file_examples_create(live: Live, env: str, tmp_path: Path) -> None:
    import re

    flag_doc, segment_doc = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), flags=re.S)
    (readme_doc,) = re.findall(r"```yaml\n(.*?)```", README.read_text(), flags=re.S)
    other = f"c{uuid.uuid4().hex[:8]}"
    run(live, "envs", "create", other)
    for name, text, group, where in (
        ("segment", segment_doc, "segments", env),  # the flag's rule refers to it
        ("flag", flag_doc, "flags", env),
        ("readme", readme_doc, "flags", other),
    ):
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        run(live, group, "create", str(path), "-e", where)
    created = run_json(live, "flags", "get", "new-checkout", "-e", env)
    assert created["rules"][1]["clauses"][0]["op"] == "segment_match"
    assert created["on"] is False


def test_every_command_is_documented() -> None:
    import typer.main

    from flagwire_server.cli.main import app

    root = typer.main.get_command(app)
    doc = DOCS.read_text()
    names = []
    for name, cmd in root.commands.items():  # type: ignore[attr-defined]
        subs = getattr(cmd, "commands", None)
        names += [f"{name} {sub}" for sub in subs] if subs else [name]
    assert {"serve", "segments list", "segments create", "flags create", "watch"} <= set(names)
    missing = [
        n for n in names if f"`flagwire {n}" not in doc and f"/ `{n.split()[-1]} " not in doc
    ]
    assert not missing, missing
    assert "FLAGWIRE_URL" in doc
    assert "docs/cli.md" in README.read_text()


def test_serve_help_points_to_the_settings_reference() -> None:
    proc = subprocess.run(
        [str(VENV_BIN / "flagwire"), "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "docs/operations.md" in proc.stdout
    assert "--port" in proc.stdout


def test_import_launchdarkly(live: Live, env: str, tmp_path: Path) -> None:
    roll = {"variations": [{"variation": 0, "weight": 40000}, {"variation": 1, "weight": 60000}]}
    org_rule = {
        "id": "orgs",
        "clauses": [{"contextKind": "org", "attribute": "tier", "op": "in", "values": ["gold"]}],
        "variation": 0,
    }
    seg_rule = {
        "id": "beta",
        "clauses": [{"attribute": "key", "op": "segmentMatch", "values": ["Beta"]}],
        "variation": 0,
    }
    data = {
        "flags": {
            "New-Checkout": {
                "key": "New-Checkout",
                "version": 3,
                "on": True,
                "salt": "abc",
                "variations": [True, False],
                "offVariation": 1,
                "rules": [org_rule, seg_rule],
                "fallthrough": {"rollout": roll},
            }
        },
        "segments": {"Beta": {"key": "Beta", "version": 1, "included": ["u1"], "salt": "s"}},
    }
    src = tmp_path / "ld.json"
    src.write_text(json.dumps(data))
    report = tmp_path / "report.json"

    dry = run(live, "import", "launchdarkly", str(src), "--env", env, "--dry-run").stdout
    assert "dry run: would import 1 flags and 1 segments" in dry
    assert live.api.get(f"/environments/{env}/flags/new-checkout").status_code == 404

    out = run(live, "import", "launchdarkly", str(src), "-e", env, "--report", str(report)).stdout
    assert "flag New-Checkout:" in out
    assert "key mapped to new-checkout (bucketing keeps New-Checkout)" in out
    assert "rules[0] (id 'orgs') dropped: a clause on context kind 'org'" in out
    assert f"imported 1 flags and 1 segments into {env}" in out
    assert json.loads(report.read_text())["keys"] == {
        "New-Checkout": "new-checkout",
        "Beta": "beta",
    }
    stored = live.api.get(f"/environments/{env}/flags/new-checkout").json()
    assert stored["semantics"] == "launchdarkly"
    assert stored["salt"] == "New-Checkout.abc"
    assert stored["rules"][0]["clauses"][0]["values"] == ["beta"]
    assert live.api.get(f"/environments/{env}/segments/beta").json()["included"] == ["u1"]

    missing = run(live, "import", "launchdarkly", str(src), ok=False)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error: import launchdarkly needs --env NAME (or FLAGWIRE_ENV)"
    src.write_text("[1, 2]")
    bad = run(live, "import", "launchdarkly", str(src), "-e", env, ok=False)
    assert bad.returncode == 1
    assert "is not LaunchDarkly flag data" in bad.stderr
