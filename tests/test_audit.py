"""The instance-wide audit trail, end to end: API, console, CLI, admin-key rotation.

Every event that belongs to no environment leaves an entry with who, when,
from which address and what; nothing secret is ever in it.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.support.cli import run_cli
from tests.support.server import ServerProcess

pytestmark = pytest.mark.timeout(120)


def trail(server: ServerProcess, **params: Any) -> dict[str, Any]:
    r = httpx.get(
        server.url + "/api/v1/audit",
        params=params,
        headers={"Authorization": f"Bearer {server.admin_key}"},
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def entries(server: ServerProcess) -> list[dict[str, Any]]:
    return list(trail(server, limit=500)["entries"])


def sign_in_form(url: str, key: str) -> tuple[httpx.Client, httpx.Response]:
    c = httpx.Client(base_url=url, headers={"Origin": url}, timeout=10)
    login = re.search(r'name="csrf" value="([^"]+)"', c.get("/signin").text)
    assert login is not None
    return c, c.post("/signin", data={"csrf": login.group(1), "key": key, "next": "/"})


def test_every_instance_wide_event_is_audited(server: ServerProcess) -> None:
    name = f"a{uuid.uuid4().hex[:8]}"
    ops = server.api("POST", "/keys", {"name": "ops team", "kind": "admin"})
    server.api("POST", "/environments", {"key": name, "name": "Audited"})
    sdk = server.api("POST", "/keys", {"name": "svc", "kind": "sdk", "env": name})
    # Actions through a second admin key are attributed to that key.
    server.api("DELETE", f"/keys/{sdk['key']['id']}", key=ops["secret"])
    server.api("DELETE", f"/environments/{name}", key=ops["secret"])

    wrong, r = sign_in_form(server.url, "fw_admin_not-a-real-key-0123456789")
    assert r.status_code == 401
    other_sdk = server.api("POST", "/keys", {"name": "reader", "kind": "sdk", "env": "production"})
    _, r = sign_in_form(server.url, other_sdk["secret"])
    assert r.status_code == 401
    c, r = sign_in_form(server.url, ops["secret"])
    assert r.status_code == 303
    page = c.get("/", follow_redirects=True).text
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', page)
    assert csrf is not None
    assert c.post("/signout", data={"csrf": csrf.group(1)}).status_code == 303

    got = entries(server)
    seen = [(e["actor"], e["action"], e["kind"], e["key"]) for e in reversed(got)]
    admin = "admin (FLAGWIRE_ADMIN_KEY)"
    expected = [
        (admin, "create", "key", ops["key"]["id"]),
        (admin, "create", "environment", name),
        (admin, "create", "key", sdk["key"]["id"]),
        ("ops team", "revoke", "key", sdk["key"]["id"]),
        ("ops team", "delete", "environment", name),
        ("unknown", "signin_failed", "session", ""),
        (admin, "create", "key", other_sdk["key"]["id"]),
        ("reader", "signin_failed", "session", other_sdk["key"]["id"]),
        ("ops team", "signin", "session", ops["key"]["id"]),
        ("ops team", "signout", "session", ops["key"]["id"]),
    ]
    assert [s for s in seen if s[2] != "admin_key"] == expected
    for e in got:
        assert e["address"]  # the server's host for a rotation, the client's address otherwise
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", e["at"])
        if e["kind"] != "admin_key":
            assert e["address"] == "127.0.0.1"
    by_action = {(e["action"], e["kind"]): e for e in got}
    assert by_action[("create", "key")]["detail"]["kind"] in ("admin", "sdk")
    assert by_action[("signin_failed", "session")]["detail"]["reason"]
    # No secret is ever written to the trail.
    blob = json.dumps(got)
    for secret in (
        server.admin_key,
        ops["secret"],
        sdk["secret"],
        other_sdk["secret"],
        "not-a-real-key",
    ):
        assert secret not in blob
    # Pages: newest first, a cursor to the next page.
    first = trail(server, limit=3)
    second = trail(server, limit=3, before=first["next"])
    assert [e["id"] for e in first["entries"] + second["entries"]] == [e["id"] for e in got[:6]]
    bad = httpx.get(
        server.url + "/api/v1/audit",
        params={"before": "x"},
        headers={"Authorization": f"Bearer {server.admin_key}"},
    )
    assert bad.status_code == 400
    # SDK keys may not read it.
    r = httpx.get(
        server.url + "/api/v1/audit", headers={"Authorization": f"Bearer {other_sdk['secret']}"}
    )
    assert r.status_code == 403
    # The console shows it.
    c2, _ = sign_in_form(server.url, server.admin_key)
    activity = c2.get("/activity").text
    assert "signin failed" in activity
    assert "ops team" in activity
    # The CLI shows it.
    out = run_cli(server.url, server.admin_key, "audit", "--instance")
    assert "signout" in out.stdout
    assert "127.0.0.1" in out.stdout
    out = run_cli(server.url, server.admin_key, "audit", "--instance", "--json", "--limit", "2")
    assert len(json.loads(out.stdout)["entries"]) == 2
    wrong.close()
    c.close()
    c2.close()


def test_admin_key_rotation_is_audited_once(make_server: Callable[..., ServerProcess]) -> None:
    a = make_server()
    b = make_server(admin_key=a.admin_key)  # a second instance with the same key
    rotations = [e for e in entries(a) if e["kind"] == "admin_key"]
    assert [e["action"] for e in rotations] == ["set"]
    a.restart()
    assert len([e for e in entries(a) if e["kind"] == "admin_key"]) == 1
    # A rolling restart with a new value: one entry, however many instances restart.
    old = a.admin_key
    for s in (a, b):
        s.stop()
        s.admin_key = old + "-rotated"
        s.start()
    rotations = [e for e in entries(a) if e["kind"] == "admin_key"]
    assert [e["action"] for e in rotations] == ["rotate", "set"]
    assert rotations[0]["actor"] == "FLAGWIRE_ADMIN_KEY"
    assert old not in json.dumps(rotations)
