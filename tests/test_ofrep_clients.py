"""OFREP with clients nobody here wrote: OpenFeature's Python, web and Node providers.

* Python: ``openfeature-sdk`` with ``openfeature-provider-ofrep`` (dev extra, pinned);
* the browser: ``@openfeature/web-sdk`` with ``@openfeature/ofrep-web-provider`` in
  ``examples/ofrep-browser/index.html``, served from another origin and driven in
  Debian's Chromium through Playwright; a flag toggled through the admin API shows
  in the page without a reload, by Server-Sent Events (polling off);
* Node: ``@openfeature/server-sdk`` with ``@openfeature/ofrep-provider``.

The npm packages are pinned by ``tests/ofrep_js/package-lock.json`` and installed
with ``npm ci`` into a cache directory (``FLAGWIRE_NPM_CACHE``, default
``~/.cache/flagwire/ofrep-js``) keyed by the lock file's hash, once per machine.
Without npm (or Chromium) on PATH those tests skip with a message; with ``CI`` set
they fail instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.builders import flag, rollout, target
from tests.support.ofrepjs import CHROMIUM_ARGS, JS, node_modules, page_server
from tests.support.redisproc import free_port
from tests.test_admin_support import start_server, stop_server

pytestmark = pytest.mark.timeout(300)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is not on PATH but CI is set")
    pytest.skip(f"{what} is not on PATH; install it to run this test (CI=1 makes this fail)")


@dataclass
class Live:
    url: str
    admin: httpx.Client
    env: str
    sdk: str
    client: str
    page_port: int


@pytest.fixture(scope="module")
def live(redis_url: str) -> Iterator[Live]:
    page_port = free_port()
    server = start_server(
        redis_url,
        f"fwt{uuid.uuid4().hex[:10]}",
        FLAGWIRE_ALLOWED_ORIGINS=f"http://127.0.0.1:{page_port}",
    )
    admin = httpx.Client(
        base_url=server.url + "/api/v1",
        headers={"Authorization": f"Bearer {server.admin_key}"},
        timeout=30,
    )
    try:
        env = "web"
        admin.post("/environments", json={"key": env}).raise_for_status()
        docs = [
            flag("new-checkout", variations=[True, False], fallthrough=0, client_side=True),
            flag("banner", variations=["summer", "winter"], fallthrough=1, client_side=True),
            flag("max-items", variations=[10, 25], fallthrough=1, client_side=True),
            flag("ratio", variations=[0.5, 1.5], fallthrough=0, client_side=True),
            flag("theme", variations=[{"c": "red"}, {"c": "blue"}], fallthrough=0),
            flag("killed", on=False, variations=[True, False], client_side=True),
            flag("vip", variations=[False, True], targets=[target(1, "alice")], fallthrough=0),
            flag("half", variations=[False, True], fallthrough=rollout(50, 50)),
            flag("server-only", variations=[True, False], fallthrough=0),
        ]
        for doc in docs:
            admin.post(f"/environments/{env}/flags", json=doc).raise_for_status()
        keys = {}
        for kind in ("sdk", "client"):
            made = admin.post("/keys", json={"name": kind, "kind": kind, "env": env})
            keys[kind] = made.json()["secret"]
        yield Live(server.url, admin, env, keys["sdk"], keys["client"], page_port)
    finally:
        admin.close()
        stop_server(server)


# --- Python: openfeature-sdk + openfeature-provider-ofrep ---------------------------------


def test_python_provider_every_type_and_reason(live: Live) -> None:
    from openfeature import api
    from openfeature.contrib.provider.ofrep import OFREPProvider
    from openfeature.evaluation_context import EvaluationContext
    from openfeature.exception import ErrorCode
    from openfeature.flag_evaluation import Reason

    api.set_provider(
        OFREPProvider(live.url, headers_factory=lambda: {"Authorization": f"Bearer {live.sdk}"}),
        domain="flagwire",
    )
    client = api.get_client("flagwire")
    bob = EvaluationContext(targeting_key="bob")
    try:
        b = client.get_boolean_details("new-checkout", False, bob)
        assert (b.value, b.reason, b.variant) == (True, Reason.STATIC, "0")
        s = client.get_string_details("banner", "none", bob)
        assert (s.value, s.reason, s.variant) == ("winter", Reason.STATIC, "1")
        i = client.get_integer_details("max-items", 0, bob)
        assert (i.value, i.reason) == (25, Reason.STATIC)
        f = client.get_float_details("ratio", 0.0, bob)
        assert (f.value, f.reason) == (0.5, Reason.STATIC)
        o = client.get_object_details("theme", {}, bob)
        assert o.value == {"c": "red"}
        off = client.get_boolean_details("killed", True, bob)
        assert (off.value, off.reason) == (False, Reason.DISABLED)
        alice = client.get_boolean_details("vip", False, EvaluationContext(targeting_key="alice"))
        assert (alice.value, alice.reason) == (True, Reason.TARGETING_MATCH)
        assert client.get_boolean_details("vip", True, bob).reason == Reason.DEFAULT
        half = client.get_boolean_details("half", False, bob)
        assert half.reason == Reason.SPLIT
        assert half.flag_metadata["flagVersion"] == 1
        missing = client.get_boolean_details("nope", True, bob)
        assert (missing.value, missing.error_code) == (True, ErrorCode.FLAG_NOT_FOUND)
        no_key = client.get_boolean_details("new-checkout", False, EvaluationContext())
        assert no_key.error_code == ErrorCode.TARGETING_KEY_MISSING
        wrong = client.get_string_details("new-checkout", "x", bob)
        assert wrong.error_code == ErrorCode.TYPE_MISMATCH
    finally:
        api.clear_providers()


def test_python_provider_with_client_side_key_sees_only_visible_flags(live: Live) -> None:
    from openfeature import api
    from openfeature.contrib.provider.ofrep import OFREPProvider
    from openfeature.evaluation_context import EvaluationContext
    from openfeature.exception import ErrorCode

    api.set_provider(
        OFREPProvider(live.url, headers_factory=lambda: {"X-API-Key": live.client}),
        domain="web",
    )
    client = api.get_client("web")
    ctx = EvaluationContext(targeting_key="bob")
    try:
        assert client.get_boolean_value("new-checkout", False, ctx) is True
        hidden = client.get_boolean_details("server-only", False, ctx)
        assert hidden.error_code == ErrorCode.FLAG_NOT_FOUND
    finally:
        api.clear_providers()


# --- JavaScript: npm packages installed once per lock file ---------------------------------


@pytest.fixture(scope="module")
def modules() -> Path:
    found = node_modules()
    if found is None:
        _missing("npm")
    assert found is not None
    return found


def test_browser_page_refreshes_without_reload(live: Live, modules: Path, tmp_path: Path) -> None:
    if CHROMIUM is None:
        _missing("chromium")
    if os.environ.get("CI"):
        import playwright.sync_api as playwright_sync
    else:
        playwright_sync = pytest.importorskip("playwright.sync_api")
    errors: list[str] = []
    with (
        page_server(live.page_port, modules, tmp_path) as origin,
        playwright_sync.sync_playwright() as p,
    ):
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(
                f"{origin}/?server={live.url}&key={live.client}&flag=new-checkout&user=bob&poll=0"
            )
            value = page.locator("#value")
            playwright_sync.expect(value).to_have_text("true", timeout=15_000)
            # The page is on another origin than the server (CORS); hidden flags stay hidden.
            hidden = page.evaluate(
                "window.ofrepClient.getBooleanDetails('server-only', false).errorCode"
            )
            assert hidden == "FLAG_NOT_FOUND"
            loads = page.evaluate("performance.getEntriesByType('navigation').length")
            times = []
            for expected, on in (("false", False), ("true", True)) * 2:
                started = time.time() * 1000
                live.admin.patch(
                    f"/environments/{live.env}/flags/new-checkout", json={"on": on}
                ).raise_for_status()
                playwright_sync.expect(value).to_have_text(expected, timeout=10_000)
                times.append(page.evaluate("window.renderedAt") - started)
            assert page.evaluate("performance.getEntriesByType('navigation').length") == loads
            shown = ", ".join(f"{t:.0f}" for t in times)
            print(f"\nOFREP web provider: change -> page re-rendered in {shown} ms (SSE, no polls)")
            assert max(times) < 5000
        finally:
            browser.close()
    assert errors == []


def test_node_server_provider(live: Live, modules: Path) -> None:
    node = shutil.which("node")
    if node is None:
        _missing("node")
    assert node is not None
    script = modules.parent / "ofrep_node_check.mjs"
    script.write_bytes((JS / "ofrep_node_check.mjs").read_bytes())
    done = subprocess.run(
        [node, str(script), live.url, live.sdk],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["bool"] == {"value": True, "reason": "STATIC", "variant": "0"}
    assert out["string"]["value"] == "winter"
    assert out["number"]["value"] == 25
    assert out["object"]["value"] == {"c": "red"}
    assert out["vip"]["reason"] == "TARGETING_MATCH"
    assert out["missing"]["errorCode"] == "FLAG_NOT_FOUND"
