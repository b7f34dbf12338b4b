"""Flags as code: ``flagwire validate``, ``plan``, ``apply`` and ``export`` against real servers."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from flagwire.core.errors import ValidationError
from flagwire.core.model import validate_flag, validate_segment
from flagwire_server.cli.folder import SERVER_FIELDS, dump_document, line_of, minimal
from flagwire_server.cli.main import app
from tests.support.builders import clause, flag, rule, segment, target
from tests.test_admin_apply import written
from tests.test_admin_support import Live, live_server
from tests.test_cli import run

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def live(redis_url: str) -> Iterator[Live]:
    yield from live_server(redis_url)


@pytest.fixture(scope="module")
def other(redis_url: str) -> Iterator[Live]:
    """A second server with a store of its own (another prefix): where exports are applied."""
    yield from live_server(redis_url)


def new_env(live: Live) -> str:
    name = f"x{uuid.uuid4().hex[:8]}"
    assert live.api.post("/environments", json={"key": name}).status_code == 201
    return name


@pytest.fixture
def env(live: Live) -> str:
    return new_env(live)


def write(root: Path, kind: str, key: str, text: str) -> Path:
    path = root / f"{kind}s" / f"{key}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def stripped(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in d.items() if k not in SERVER_FIELDS} for d in docs]


CHECKOUT = """\
key: checkout
on: true
variations: [true, false]
fallthrough: {variation: 1}
"""


def test_validate_names_file_and_line_offline(tmp_path: Path) -> None:
    # No server: validate never connects (FLAGWIRE_URL points nowhere).
    write(tmp_path, "flag", "checkout", CHECKOUT)
    write(
        tmp_path,
        "flag",
        "bad",
        "on: true\nvariations: [a, b]\nrules:\n  - clauses:\n"
        "      - {attribute: v, op: semver_lt, values: [nope]}\n"
        "    variation: 0\nfallthrough: {variation: 3}\n",
    )
    write(tmp_path, "segment", "staff", "key: other\nincluded: [u1]\n")
    write(tmp_path, "segment", "broken", "included: [u1\n")
    r = CliRunner().invoke(
        app, ["validate", str(tmp_path)], env={"FLAGWIRE_URL": "http://0.0.0.0:1"}
    )
    assert r.exit_code == 1
    err = r.stderr
    bad = tmp_path / "flags" / "bad.yaml"
    # The model's own messages, the same the server answers with.
    with pytest.raises(ValidationError) as server_says:
        validate_flag(
            {"key": "bad", "on": True, "variations": ["a", "b"], "fallthrough": {"variation": 3}}
        )
    assert f"{bad}:7: fallthrough.variation: {server_says.value.errors[0][1]}" in err
    assert f"{bad}:5: rules[0].clauses[0].values[0]: expected a semantic version" in err
    assert (
        f"{tmp_path / 'segments' / 'staff.yaml'}:1: key: 'other' does not match the file name"
        in err
    )
    assert f"{tmp_path / 'segments' / 'broken.yaml'}:2: not valid YAML" in err
    assert "checkout" not in err
    (tmp_path / "flags" / "bad.yaml").unlink()
    for name in ("staff", "broken"):
        (tmp_path / "segments" / f"{name}.yaml").unlink()
    r = CliRunner().invoke(app, ["validate", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "1 flags and 0 segments valid" in r.stdout


def test_line_of_points_at_the_deepest_existing_part() -> None:
    import yaml

    from flagwire_server.cli.folder import _LOADER

    node = yaml.compose("key: a\nrules:\n  - clauses:\n      - op: in\n", Loader=_LOADER)
    assert line_of(node, "rules[0].clauses[0].op") == 4
    assert line_of(node, "rules[0].clauses[0].values") == 4
    assert line_of(node, "rules[0].variation") == 3
    assert line_of(node, "fallthrough") == 1


def test_plan_shows_fields_and_exits_2_on_drift_then_apply_and_prune(
    live: Live, env: str, tmp_path: Path
) -> None:
    api = live.api
    api.post(f"/environments/{env}/flags", json=flag("checkout", on=False, off_variation=None))
    api.post(f"/environments/{env}/flags", json=flag("legacy"))
    write(tmp_path, "flag", "checkout", CHECKOUT)
    write(tmp_path, "segment", "staff", "included: [u1]\n")
    r = run(live, "plan", str(tmp_path), "-e", env, ok=False)
    assert r.returncode == 2, r.stderr
    out = r.stdout
    assert "+ segment staff: create" in out
    assert "~ flag checkout: update at version 1" in out
    assert "    on: false -> true" in out
    assert "    fallthrough.variation: 0 -> 1" in out
    assert "flag legacy: on the server only (kept; --prune deletes it)" in out
    assert "1 to create, 1 to update, 0 to delete" in out
    plan = json.loads(run(live, "plan", str(tmp_path), "-e", env, "--json", ok=False).stdout)
    assert plan["drift"] is True
    assert [(c["kind"], c["key"], c["action"]) for c in plan["changes"]] == [
        ("segment", "staff", "create"),
        ("flag", "checkout", "update"),
    ]
    # Applying leaves legacy alone (no --prune); one audit entry names the apply.
    r = run(live, "apply", str(tmp_path), "-e", env, "--name", "commit 1a2b", "--wait", "0.2")
    assert "Applied to" in r.stdout
    assert "1 created, 1 updated, 0 deleted" in r.stdout
    audit = api.get(f"/environments/{env}/audit").json()["entries"]
    assert (audit[0]["action"], audit[0]["key"]) == ("apply", "commit 1a2b")
    assert api.get(f"/environments/{env}/flags/checkout").json()["on"] is True
    assert api.get(f"/environments/{env}/flags/legacy").status_code == 200
    # In sync now: plan exits 0, apply again writes nothing.
    r = run(live, "plan", str(tmp_path), "-e", env)
    assert "matches the folder" in r.stdout
    before = written(live, env)
    assert "matches the folder" in run(live, "apply", str(tmp_path), "-e", env).stdout
    assert written(live, env) == before
    # --prune: plan counts the deletion as drift, apply deletes.
    r = run(live, "plan", str(tmp_path), "-e", env, "--prune", ok=False)
    assert r.returncode == 2
    assert "- flag legacy: delete at version 1" in r.stdout
    assert "1 deleted" in run(live, "apply", str(tmp_path), "-e", env, "--prune").stdout
    assert api.get(f"/environments/{env}/flags/legacy").status_code == 404
    # A change made by hand is drift again.
    api.patch(f"/environments/{env}/flags/checkout", json={"on": False})
    r = run(live, "plan", str(tmp_path), "-e", env, ok=False)
    assert r.returncode == 2
    assert "on: false -> true" in r.stdout


def test_invalid_folder_or_server_error_applies_nothing(
    live: Live, env: str, tmp_path: Path
) -> None:
    write(tmp_path, "flag", "checkout", CHECKOUT)
    write(tmp_path, "flag", "bad", "variations: []\nfallthrough: {variation: 0}\n")
    before = written(live, env)
    r = run(live, "apply", str(tmp_path), "-e", env, ok=False)
    assert r.returncode == 1
    assert "bad.yaml:1: variations: expected at least 1 item" in r.stderr
    assert written(live, env) == before
    (tmp_path / "flags" / "bad.yaml").unlink()
    r = run(live, "apply", str(tmp_path), "-e", "no-such-env", ok=False)
    assert r.returncode == 1
    assert r.stderr.startswith("error: 404")


def test_export_writes_the_layout_and_apply_reads_it_back(
    live: Live, other: Live, env: str, tmp_path: Path
) -> None:
    api = live.api
    api.post(f"/environments/{env}/segments", json=segment("staff", included=["u1"]))
    api.post(
        f"/environments/{env}/flags",
        json=flag(
            "checkout",
            variations=["a", "b", "c"],
            tags=["pay"],
            targets=[target(2, "vip")],
            rules=[rule(clause("email", "ends_with", "@x.com"), variation=0)],
        ),
    )
    (tmp_path / "flags").mkdir()
    (tmp_path / "flags" / "stale.yaml").write_text(CHECKOUT.replace("checkout", "stale"))
    r = run(live, "export", "--env", env, str(tmp_path))
    assert "exported 1 flags and 1 segments" in r.stdout
    assert sorted(p.name for p in (tmp_path / "flags").iterdir()) == ["checkout.yaml"]
    text = (tmp_path / "flags" / "checkout.yaml").read_text()
    assert text.startswith("key: checkout\ntags:\n- pay\non: true\nvariations:\n- a\n")
    assert "version" not in text
    assert "updated_by" not in text
    assert "salt" not in text
    assert (tmp_path / "segments" / "staff.yaml").read_text() == "key: staff\nincluded:\n- u1\n"
    assert run(live, "plan", str(tmp_path), "-e", env).returncode == 0
    target_env = new_env(other)
    run(other, "apply", str(tmp_path), "-e", target_env)
    for plural in ("flags", "segments"):
        src = api.get(f"/environments/{env}/{plural}").json()[plural]
        dst = other.api.get(f"/environments/{target_env}/{plural}").json()[plural]
        assert stripped(dst) == stripped(src)
    # The older form still writes one JSON file.
    assert "exported 1 flags" in run(live, "export", env, str(tmp_path / "one.json")).stdout


# --- export -> apply is an identity, over generated documents ------------------------------

_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
_keys = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,11}", fullmatch=True)
_clauses = st.one_of(
    st.builds(
        lambda a, v: clause(a, "in", *v),
        _text.filter(bool),
        st.lists(_text, min_size=1, max_size=3),
    ),
    st.builds(lambda a, v: clause(a, "starts_with", v), _text.filter(bool), _text),
    st.builds(
        lambda a, v, n: clause(a, "gt", v, negate=n),
        _text.filter(bool),
        st.one_of(st.integers(-(2**53), 2**53), st.floats(-1e9, 1e9, allow_nan=False)),
        st.booleans(),
    ),
    st.builds(lambda a: clause(a, "semver_lt", "1.2.3-rc.1"), _text.filter(bool)),
    st.builds(lambda k: {"op": "segment_match", "values": [k], "negate": False}, _keys),
)


@st.composite
def flags(draw: st.DrawFn, key: str) -> dict[str, Any]:
    kind = draw(st.sampled_from(["bool", "string", "number", "json"]))
    values = {
        "bool": st.just([True, False]),
        "string": st.lists(_text, min_size=1, max_size=4),
        "number": st.lists(st.integers(-(10**6), 10**6), min_size=1, max_size=4),
        "json": st.lists(st.dictionaries(_text, _text, max_size=2), min_size=1, max_size=3),
    }[kind]
    variations = draw(values)
    n = len(variations)
    index = st.integers(0, n - 1)
    weight = draw(st.integers(0, 100_000))
    serve = draw(
        st.one_of(
            st.builds(lambda v: {"variation": v}, index),
            st.just(
                {
                    "rollout": {
                        "variations": [
                            {"variation": 0, "weight": weight},
                            {"variation": n - 1, "weight": 100_000 - weight},
                        ]
                    }
                }
            ),
        )
    )
    doc: dict[str, Any] = {
        "key": key,
        "on": draw(st.booleans()),
        "variations": variations,
        "fallthrough": serve,
        "off_variation": draw(st.one_of(st.none(), index)),
        "name": draw(_text),
        "description": draw(_text),
        "tags": draw(st.lists(_text.filter(bool), max_size=2, unique=True)),
        "targets": [
            {"variation": draw(index), "values": draw(st.lists(_text, max_size=2))}
            for _ in range(draw(st.integers(0, 2)))
        ],
        "rules": [
            {"clauses": draw(st.lists(_clauses, min_size=1, max_size=2)), "variation": draw(index)}
            for _ in range(draw(st.integers(0, 2)))
        ],
    }
    if draw(st.booleans()):
        doc["salt"] = draw(_text.filter(bool))
    return validate_flag(doc)


@st.composite
def folders(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    keys = draw(st.lists(_keys, min_size=1, max_size=4, unique=True))
    fl = [draw(flags(k)) for k in keys[: max(1, len(keys) - 1)]]
    segs = [
        validate_segment(
            {
                "key": k,
                "included": draw(st.lists(_text, max_size=2)),
                "rules": [
                    {
                        "clauses": draw(
                            st.lists(
                                _clauses.filter(lambda c: c["op"] != "segment_match"),
                                min_size=1,
                                max_size=2,
                            )
                        )
                    }
                ],
            }
        )
        for k in keys[len(keys) - 1 :]
    ]
    return fl, segs


@given(folders())
@settings(
    max_examples=6,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # shrinking over two servers takes minutes;
    # the offline round trip below finds (and shrinks) the same documents cheaply
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_export_then_apply_elsewhere_is_an_identity(
    live: Live, other: Live, tmp_path_factory: pytest.TempPathFactory, docs: Any
) -> None:
    fl, segs = docs
    src, dst = new_env(live), new_env(other)
    body = {
        "name": "seed",
        "documents": [{"kind": "segment", "key": s["key"], "document": s} for s in segs]
        + [{"kind": "flag", "key": f["key"], "document": f} for f in fl],
    }
    seeded = live.api.post(f"/environments/{src}/apply", json=body)
    assert seeded.status_code == 200, seeded.text
    root = tmp_path_factory.mktemp("export")
    runner = CliRunner()
    base = {"FLAGWIRE_ADMIN_KEY": live.admin_key}
    r = runner.invoke(app, ["export", "--env", src, str(root), "--url", live.url], env=base)
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        app,
        ["apply", str(root), "-e", dst, "--url", other.url],
        env={"FLAGWIRE_ADMIN_KEY": other.admin_key},
    )
    assert r.exit_code == 0, r.output
    for plural in ("flags", "segments"):
        a = live.api.get(f"/environments/{src}/{plural}").json()[plural]
        b = other.api.get(f"/environments/{dst}/{plural}").json()[plural]
        assert stripped(b) == stripped(a)
    # And the exported folder has no drift against either.
    r = runner.invoke(
        app,
        ["plan", str(root), "-e", dst, "--url", other.url],
        env={"FLAGWIRE_ADMIN_KEY": other.admin_key},
    )
    assert r.exit_code == 0, r.output


@given(folders())
@settings(max_examples=150, deadline=None)
def test_minimal_documents_round_trip_through_yaml(docs: Any) -> None:
    """Offline half of the identity: normalised -> minimal YAML -> read back -> same."""
    import yaml

    from flagwire_server.cli.folder import _LOADER

    fl, segs = docs
    for kind, doc in [*(("flag", f) for f in fl), *(("segment", s) for s in segs)]:
        text = dump_document(minimal(kind, doc))
        back = yaml.load(text, Loader=_LOADER)
        assert (validate_flag if kind == "flag" else validate_segment)(back) == doc, text


def test_line_breaks_of_every_kind_survive_yaml() -> None:
    import yaml

    from flagwire_server.cli.folder import _LOADER

    for text in ["a\x85b", "a\u2028b", "a\u2029b", "a\r\nb", "a\tb", " lead", "on", "yes", "1e3"]:
        doc = {"key": "k", "name": text}
        assert yaml.load(dump_document(doc), Loader=_LOADER) == doc


def test_json_files_are_read_as_json_with_lines(tmp_path: Path) -> None:
    from flagwire_server.cli.folder import read_folder

    (tmp_path / "flags").mkdir()
    (tmp_path / "flags" / "num.json").write_text(
        '{\n  "variations": [1e3, 2],\n  "fallthrough": {"variation": 0}\n}\n'
    )
    (tmp_path / "flags" / "bad.json").write_text(
        '{\n  "variations": [1, 2],\n  "fallthrough": {"variation": 5}\n}\n'
    )
    (tmp_path / "flags" / "broken.json").write_text('{\n  "variations": [1,\n')
    found = read_folder(tmp_path)
    # YAML 1.1 would have read 1e3 as the string "1e3" (and refused the mixed kinds).
    assert found.documents[("flag", "num")].normal["variations"] == [1000.0, 2]
    problems = sorted(str(p) for p in found.problems)
    assert problems[0].startswith(f"{tmp_path / 'flags' / 'bad.json'}:3: fallthrough.variation:")
    assert problems[1].startswith(f"{tmp_path / 'flags' / 'broken.json'}:3: not valid JSON")
