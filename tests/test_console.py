"""The web console in a real Chromium against a real ``flagwire serve``.

One server and one browser per module; every test gets a fresh browser context
(its own cookies) and fails on any JavaScript error or console error, except
the HTTP error responses a test provokes on purpose (``page_errors.allow``).
Screenshots go to ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.inprocess import InProcessServer
from tests.support.polling import poll_blocking

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

if os.environ.get("CI"):
    import playwright.sync_api as playwright_sync
else:
    playwright_sync = pytest.importorskip("playwright.sync_api")
Browser = playwright_sync.Browser
Page = playwright_sync.Page
expect = playwright_sync.expect

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "screenshots"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
LAPTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}

if CHROMIUM is None and not os.environ.get("CI"):
    pytest.skip(
        "chromium is not on PATH (apt-get install chromium); set CI=1 to make this fail",
        allow_module_level=True,
    )


# --- fixtures ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def console_server(redis_url: str) -> Iterator[InProcessServer]:
    proc = InProcessServer(redis_url, prefix=f"fwc{uuid.uuid4().hex[:10]}")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    assert CHROMIUM is not None, "chromium is not on PATH but CI is set"
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


class PageErrors:
    """JavaScript errors and console errors of one page; ``allow`` expected HTTP errors."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.allowed: list[re.Pattern[str]] = []

    def allow(self, pattern: str) -> None:
        self.allowed.append(re.compile(pattern))

    def unexpected(self) -> list[str]:
        return [e for e in self.errors if not any(p.search(e) for p in self.allowed)]


@pytest.fixture
def page_errors() -> PageErrors:
    return PageErrors()


def _watch(page: Any, errors: PageErrors) -> None:
    page.on(
        "console",
        lambda m: (
            errors.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None
        ),
    )
    page.on("pageerror", lambda e: errors.errors.append(f"pageerror: {e}"))


@pytest.fixture
def page(browser: Any, page_errors: PageErrors) -> Iterator[Any]:
    context = browser.new_context(viewport=LAPTOP)
    pg = context.new_page()
    pg.set_default_timeout(10_000)
    _watch(pg, page_errors)
    yield pg
    context.close()
    assert not page_errors.unexpected(), "\n".join(page_errors.unexpected())


def shot(page: Any, name: str, *, full: bool = True) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(150)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full)


def assert_no_sideways_scroll(page: Any) -> None:
    width, inner = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert width <= inner, f"page is {width}px wide in a {inner}px viewport"


def sign_in(page: Any, server: InProcessServer, next_path: str = "/") -> None:
    page.goto(server.url + next_path)
    expect(page).to_have_url(re.compile(r"/signin"))
    page.get_by_label("Admin key").fill(server.admin_key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def bool_flag(key: str, *, on: bool = True, **extra: Any) -> dict[str, Any]:
    return {
        "key": key,
        "on": on,
        "variations": [True, False],
        "off_variation": 1,
        "fallthrough": {"variation": 0},
        **extra,
    }


def new_key(prefix: str = "t") -> str:
    return f"{prefix}-{secrets.token_hex(2)}"


class ThreadedClient:
    """A real ``flagwire.FlagClient`` running on an event loop in a thread of its own."""

    def __init__(self, url: str, sdk_key: str) -> None:
        from flagwire import FlagClient

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.client = FlagClient(url, sdk_key, start_timeout=10.0)
        self._call(self.client.start())

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(15)

    def value(self, key: str, default: Any = None) -> Any:
        async def get() -> Any:
            return self.client.variation(key, {"key": "user-1"}, default)

        return self._call(get())

    def has(self, key: str) -> bool:
        async def get() -> bool:
            snap = self.client.snapshot
            return snap is not None and key in snap.flags

        return bool(self._call(get()))

    def close(self) -> None:
        self._call(self.client.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def wait_until(check: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    """:func:`tests.support.polling.poll_blocking` with this module's deadline."""
    return poll_blocking(check, timeout, what)


@pytest.fixture(scope="module")
def sdk_client(console_server: InProcessServer) -> Iterator[ThreadedClient]:
    created = console_server.api(
        "POST", "/keys", {"name": "console-test-sdk", "kind": "sdk", "env": "production"}
    )
    client = ThreadedClient(console_server.url, created["secret"])
    try:
        yield client
    finally:
        client.close()


# --- scenarios ---------------------------------------------------------------------


def test_sign_in_create_flag_client_sees_it_and_kill_switch(
    page: Any, console_server: InProcessServer, sdk_client: ThreadedClient
) -> None:
    sign_in(page, console_server)
    expect(page).to_have_url(re.compile(r"/envs/production/flags$"))
    # The admin key is not kept anywhere the page's scripts can read.
    storage = page.evaluate(
        "() => JSON.stringify(localStorage) + JSON.stringify(sessionStorage) + document.cookie"
    )
    assert console_server.admin_key not in storage
    assert "fw_session" not in storage

    key = new_key("new-checkout")
    page.get_by_text("New flag", exact=True).click()
    page.get_by_label("Key", exact=True).fill(key)
    page.get_by_label("Tags").fill("checkout, web")
    page.get_by_role("button", name="Create flag").click()
    expect(page).to_have_url(re.compile(rf"/envs/production/flags/{key}$"))
    expect(page.get_by_role("heading", name=key)).to_be_visible()

    wait_until(lambda: sdk_client.has(key), what="the FlagClient to see the new flag")
    assert sdk_client.value(key, "default") is False  # created off: serves the off variation

    # Kill switch in production: asks first; cancelling changes nothing.
    switch = page.get_by_role("switch", name=f"{key} on")
    switch.click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("production")
    dialog.get_by_role("button", name="Cancel").click()
    expect(switch).to_have_attribute("aria-checked", "false")

    switch.click()
    page.get_by_role("dialog").get_by_role("button", name="Turn on").click()
    expect(page.locator("#status")).to_contain_text(
        re.compile(r"Applied by \d+ of \d+ connected clients? in \d+ ms")
    )
    expect(switch).to_have_attribute("aria-checked", "true")
    wait_until(lambda: sdk_client.value(key) is True, what="the client to see the flag on")

    switch.click()
    page.get_by_role("dialog").get_by_role("button", name="Turn off").click()
    status = page.locator("#status")
    expect(status).to_contain_text(re.compile(r"turned off.*Applied by (\d+) of \1 connected"))
    assert sdk_client.value(key) is False  # acknowledged before the confirmation showed
    shot(page, "flag-page-kill-switch", full=False)

    page.goto(console_server.url + "/envs/production/flags")
    expect(page.locator(f'tr[data-key="{key}"] .serving')).to_have_text("off → false")
    expect(page.locator(f'tr[data-key="{key}"]')).to_contain_text("admin (FLAGWIRE_ADMIN_KEY)")


def test_thirty_percent_rollout_is_validated_and_saved(
    page: Any, console_server: InProcessServer
) -> None:
    key = new_key("checkout-redesign")
    rule = {
        "description": "Staff see it first",
        "variation": 0,
        "clauses": [
            {"attribute": "email", "op": "ends_with", "values": ["@example.com"]},
            {"attribute": "country", "op": "in", "values": ["NL", "DE"], "negate": True},
        ],
    }
    console_server.api(
        "POST",
        "/environments/production/flags",
        bool_flag(
            key,
            name="New checkout",
            tags=["checkout"],
            rules=[rule],
            description="The redesigned checkout flow",
            targets=[{"variation": 1, "values": ["qa-bot"]}],
        ),
    )
    sign_in(page, console_server, f"/envs/production/flags/{key}")
    default = page.locator("fieldset", has_text="Default rule")
    default.get_by_label("Serve").select_option("rollout")
    default.get_by_label("#0 true %").fill("30")
    default.get_by_label("#1 false %").fill("60")
    expect(default).to_contain_text("Total: 90% — must be 100%")
    page.get_by_role("button", name="Save changes").click()
    error = default.locator(".field-error")
    expect(error).to_contain_text("must add up to 100%")
    assert console_server.api("GET", f"/environments/production/flags/{key}")["fallthrough"] == {
        "variation": 0
    }

    default.get_by_label("#1 false %").fill("70")
    expect(default).to_contain_text("Total: 100%")
    page.get_by_role("button", name="Save changes").click()
    expect(page.locator("#status")).to_contain_text("Saved version 2")
    expect(page.locator("#status")).to_contain_text(re.compile(r"Applied by|No clients"))
    # Our own change comes back over the live stream too; it is not "changed elsewhere".
    page.wait_for_timeout(200)
    expect(page.locator("#stale")).to_be_hidden()
    doc = console_server.api("GET", f"/environments/production/flags/{key}")
    assert doc["fallthrough"]["rollout"]["variations"] == [
        {"variation": 0, "weight": 30000},
        {"variation": 1, "weight": 70000},
    ]
    page.reload()
    expect(page.locator("#flag-serving")).to_have_text("30% true · 1 rule · 1 target")
    expect(default.get_by_label("#0 true %")).to_have_value("30")
    page.set_viewport_size({"width": 1280, "height": 1760})
    page.evaluate("() => window.scrollTo(0, 0)")
    shot(page, "flag-page", full=False)


def test_invalid_regex_is_shown_next_to_its_field(
    page: Any, page_errors: PageErrors, console_server: InProcessServer
) -> None:
    page_errors.allow(r"status of 422")
    key = new_key("staff-banner")
    console_server.api("POST", "/environments/production/flags", bool_flag(key))
    sign_in(page, console_server, f"/envs/production/flags/{key}")
    page.get_by_role("button", name="Add rule").click()
    rule = page.locator("li.rule").first
    rule.get_by_label("Attribute").fill("email")
    rule.get_by_label("Operator").select_option("matches")
    rule.get_by_label("Values").fill("([a-z]+@example\\.com")
    page.get_by_role("button", name="Save changes").click()
    values = rule.locator('textarea[data-path="rules[0].clauses[0].values"]')
    field = rule.locator(".field", has=page.locator('[data-path="rules[0].clauses[0].values"]'))
    expect(field.locator(".field-error")).to_contain_text("invalid regular expression")
    expect(values).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#status")).to_contain_text("Not saved")
    assert console_server.api("GET", f"/environments/production/flags/{key}")["rules"] == []
    shot(page, "flag-page-validation-error", full=False)

    values.fill("^[a-z]+@example\\.com$")
    page.get_by_role("button", name="Save changes").click()
    expect(page.locator("#status")).to_contain_text("Saved version 2")
    expect(page.locator(".field-error")).to_have_count(0)


def test_change_through_the_api_appears_live_without_reload(
    page: Any, console_server: InProcessServer
) -> None:
    for name in ("dark-mode", "search-v2", "pricing-page"):
        console_server.api(
            "POST", "/environments/production/flags", bool_flag(new_key(name), tags=["live"])
        )
    sign_in(page, console_server)
    page.evaluate("() => { window.__sameDocument = true; }")
    expect(page.locator("#live-dot")).to_have_class(re.compile(r"\bon\b"))
    version_before = int(page.locator("#env-version").inner_text())

    key = new_key("recommendations")
    # The page notes (in its own clock, the machine's) when the row shows up.
    page.evaluate(
        """key => new MutationObserver((_, obs) => {
        if (document.querySelector(`tr[data-key="${key}"]`)) {
            window.__appearedAt = Date.now(); obs.disconnect(); }
    }).observe(document.body, {childList: true, subtree: true})""",
        key,
    )
    started_ms = time.time() * 1000
    console_server.api(
        "POST",
        "/environments/production/flags",
        bool_flag(key, name="Made by the API", tags=["api"]),
    )
    row = page.locator(f'tr[data-key="{key}"]')
    expect(row).to_be_visible(timeout=2000)
    expect(row).to_have_class(re.compile(r"\bflash\b"))
    appeared_ms = page.evaluate("() => window.__appearedAt") - started_ms
    print(f"live: the new flag appeared {appeared_ms:.0f} ms after the API call returned")
    assert appeared_ms < 1000, f"the new flag took {appeared_ms:.0f} ms to appear"
    shot(page, "flags-list", full=False)

    console_server.api("PATCH", f"/environments/production/flags/{key}", {"on": False})
    expect(row.get_by_role("switch")).to_have_attribute("aria-checked", "false", timeout=2000)
    expect(row.locator(".serving")).to_have_text("off → false")
    assert int(page.locator("#env-version").inner_text()) >= version_before + 2
    assert page.evaluate("() => window.__sameDocument") is True

    # Search and tag filter.
    page.get_by_role("searchbox", name="Search").fill(key)
    expect(page.locator("#flag-rows tr:visible")).to_have_count(1)
    page.get_by_role("searchbox", name="Search").fill("")
    page.get_by_label("Tag", exact=True).select_option("live")
    expect(page.locator("#flag-rows tr:visible")).to_have_count(3)
    expect(page.locator("#env-connected")).to_have_text(re.compile(r"^\d+$"))


def test_history_diff_and_restore(page: Any, console_server: InProcessServer) -> None:
    key = new_key("onboarding-tour")
    base = f"/environments/production/flags/{key}"
    console_server.api("POST", "/environments/production/flags", bool_flag(key, on=False))
    console_server.api("PATCH", base, {"on": True, "description": "launch"})
    rollout = {"variations": [{"variation": 0, "weight": 10000}, {"variation": 1, "weight": 90000}]}
    console_server.api("PATCH", base, {"fallthrough": {"variation": None, "rollout": rollout}})
    sign_in(page, console_server, f"/envs/production/flags/{key}/history")
    versions = page.locator("li.version")
    expect(versions).to_have_count(3)
    newest = versions.nth(0)
    expect(newest).to_contain_text("current")
    expect(newest.locator(".diff")).to_contain_text("fallthrough.rollout.variations[0].weight")
    expect(newest.locator(".served")).to_have_text("Serving: true → 10% true")
    expect(versions.nth(1).locator(".diff")).to_contain_text("description")
    shot(page, "history")

    versions.nth(1).get_by_role("button", name="Restore this version").click()
    page.get_by_role("dialog").get_by_role("button", name="Restore").click()
    expect(page.locator("#status")).to_contain_text("Version 2 restored as version 4")
    doc = console_server.api("GET", base)
    assert doc["version"] == 4
    assert doc["fallthrough"] == {"variation": 0}
    assert doc["on"] is True
    expect(versions).to_have_count(4)  # the page follows the change live


def test_keys_create_copy_and_revoke(page: Any, console_server: InProcessServer) -> None:
    sign_in(page, console_server, "/keys")
    name = f"browser-{secrets.token_hex(2)}"
    page.get_by_label("Name").fill(name)
    page.get_by_label("Kind").select_option("sdk")
    page.get_by_role("button", name="Create key").click()
    secret_box = page.locator("#secret-value")
    expect(secret_box).to_have_value(re.compile(r"^fw_sdk_"))
    secret = secret_box.input_value()
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=console_server.url)
    page.get_by_role("button", name="Copy").click()
    expect(page.locator("#status")).to_contain_text("Secret copied")
    assert page.evaluate("() => navigator.clipboard.readText()") == secret
    row = page.locator("#key-rows tr", has_text=name)
    expect(row).to_be_visible()
    status, _ = console_server.request(
        "POST", "/api/v1/environments/production/evaluate", {"context": {"key": "u"}}, key=secret
    )
    assert status == 200
    shot(page, "keys", full=False)

    row.get_by_role("button", name="Revoke").click()
    page.get_by_role("dialog").get_by_role("button", name="Revoke").click()
    expect(row).to_contain_text("revoked")
    wait_until(
        lambda: (
            console_server.request(
                "POST",
                "/api/v1/environments/production/evaluate",
                {"context": {"key": "u"}},
                key=secret,
            )[0]
            == 401
        ),
        what="the revoked key to be refused",
    )
    keys = console_server.api("GET", "/keys")
    listed = keys["keys"] if isinstance(keys, dict) else keys
    assert any(k["name"] == name and k["revoked_at"] for k in listed)


def test_sign_out_ends_the_session(page: Any, console_server: InProcessServer) -> None:
    sign_in(page, console_server)
    cookie = next(c for c in page.context.cookies() if c["name"] == "fw_session")
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"
    jar = {"fw_session": cookie["value"]}
    assert httpx.get(console_server.url + "/api/v1/environments", cookies=jar).status_code == 200
    forged = {"fw_session": cookie["value"][:-2] + ("AA" if cookie["value"][-2:] != "AA" else "BB")}
    assert httpx.get(console_server.url + "/api/v1/environments", cookies=forged).status_code == 401
    # A session write without the CSRF token is refused.
    no_csrf = httpx.post(
        console_server.url + "/api/v1/environments/production/flags",
        json=bool_flag(new_key()),
        cookies=jar,
    )
    assert no_csrf.status_code == 403
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/signin$"))
    # The copied cookie is dead: the session is gone from the server, not just the browser.
    assert httpx.get(console_server.url + "/api/v1/environments", cookies=jar).status_code == 401
    page_resp = httpx.get(console_server.url + "/envs/production/flags", cookies=jar)
    assert page_resp.status_code == 303
    assert "/signin" in page_resp.headers["location"]
    page.goto(console_server.url + "/keys")
    expect(page).to_have_url(re.compile(r"/signin\?next="))


def test_sign_in_refuses_bad_keys_and_foreign_posts(
    page: Any, page_errors: PageErrors, console_server: InProcessServer
) -> None:
    page_errors.allow(r"status of 401")
    page.goto(console_server.url + "/signin")
    page.get_by_label("Admin key").fill("fw_admin_not-a-real-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("Unknown or revoked admin key")
    # A cross-site form post (no double-submit token, foreign Origin) is refused.
    resp = httpx.post(
        console_server.url + "/signin",
        data={"key": console_server.admin_key},
        headers={"Origin": "https://evil.example"},
    )
    assert resp.status_code == 403
    assert "fw_session" not in resp.headers.get("set-cookie", "")
    # Pages carry a strict CSP.
    csp = httpx.get(console_server.url + "/signin").headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp


def test_segments_audit_and_phone_layout(
    browser: Any, page_errors: PageErrors, console_server: InProcessServer
) -> None:
    context = browser.new_context(
        viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    page = context.new_page()
    page.set_default_timeout(10_000)
    _watch(page, page_errors)
    try:
        key = new_key("mobile-nav")
        console_server.api(
            "POST",
            "/environments/production/flags",
            bool_flag(key, tags=["mobile"], description="seen on a phone"),
        )
        sign_in(page, console_server)
        expect(page.locator(f'tr[data-key="{key}"]')).to_be_visible()
        assert_no_sideways_scroll(page)
        shot(page, "flags-list-phone", full=False)
        page.goto(console_server.url + f"/envs/production/flags/{key}")
        expect(page.get_by_role("button", name="Save changes")).to_be_visible()
        assert_no_sideways_scroll(page)
        shot(page, "flag-page-phone", full=False)

        page.goto(console_server.url + "/envs/production/segments")
        page.get_by_text("New segment", exact=True).click()
        seg = f"beta-{secrets.token_hex(2)}"
        page.get_by_label("Key").fill(seg)
        page.get_by_role("button", name="Create segment").click()
        expect(page).to_have_url(re.compile(rf"/segments/{seg}$"))
        assert_no_sideways_scroll(page)
        page.get_by_label("Included keys").fill("alice\nbob")
        page.get_by_role("button", name="Save changes").click()
        expect(page.locator("#status")).to_contain_text("Saved version 2")
        doc = console_server.api("GET", f"/environments/production/segments/{seg}")
        assert doc["included"] == ["alice", "bob"]

        page.goto(console_server.url + "/envs/production/audit")
        expect(page.locator("ol.audit li").first).to_contain_text(seg)
        assert_no_sideways_scroll(page)
        shot(page, "audit-phone", full=False)

        console_server.api(
            "PATCH",
            f"/environments/production/flags/{key}",
            {"description": "a much longer description " * 6, "tags": ["x" * 60]},
        )
        for path in (f"/envs/production/flags/{key}/history", "/keys"):
            page.goto(console_server.url + path)
            expect(page.get_by_role("heading", level=1)).to_be_visible()
            assert_no_sideways_scroll(page)
        shot(page, "keys-phone", full=False)
    finally:
        context.close()
    assert not page_errors.unexpected(), "\n".join(page_errors.unexpected())


def test_editor_sections_env_switcher_and_keyboard(
    page: Any, console_server: InProcessServer
) -> None:
    env = f"staging-{secrets.token_hex(2)}"
    sign_in(page, console_server, "/envs")
    page.get_by_text("New environment", exact=True).click()
    page.get_by_label("Key").fill(env)
    page.get_by_role("button", name="Create environment").click()
    expect(page).to_have_url(re.compile(rf"/envs/{env}/flags$"))
    console_server.api("POST", f"/environments/{env}/segments", {"key": "beta", "included": ["u1"]})
    console_server.api("POST", f"/environments/{env}/flags", bool_flag("base", on=False))
    console_server.api(
        "POST",
        f"/environments/{env}/flags",
        {
            "key": "color",
            "on": True,
            "variations": ["red", "blue"],
            "fallthrough": {"variation": 0},
        },
    )
    page.get_by_role("link", name="Environments").click()
    row = page.locator(f'#env-rows tr[data-env="{env}"]')
    expect(row.locator(".env-v")).to_have_text("3")
    expect(page.locator('#env-rows tr[data-env="production"] .env-c')).to_have_text(
        re.compile(r"^\d+$")
    )
    shot(page, "environments", full=False)
    page.get_by_label("Environment").select_option("production")
    expect(page).to_have_url(re.compile(r"/envs/production/flags$"))
    page.get_by_label("Environment").select_option(env)
    expect(page).to_have_url(re.compile(rf"/envs/{env}/flags$"))

    # Keyboard: focus a switch and press Space; outside production there is no dialog.
    switch = page.get_by_role("switch", name="base on")
    switch.focus()
    page.keyboard.press("Space")
    expect(switch).to_have_attribute("aria-checked", "true")
    expect(page.locator("#status")).to_contain_text("base turned on")
    assert console_server.api("GET", f"/environments/{env}/flags/base")["on"] is True
    expect(page.get_by_role("switch", name="base on")).to_be_focused()

    page.get_by_role("link", name="color").click()
    page.get_by_role("button", name="Add variation").click()
    page.get_by_role("textbox", name="Variation #2").fill("green")
    page.get_by_role("button", name="Add prerequisite").click()
    pre = page.locator("fieldset", has_text="Prerequisites")
    pre.get_by_label("Flag").select_option("base")
    pre.get_by_label("must serve").select_option("0")
    page.get_by_role("button", name="Add target").click()
    targets = page.locator("fieldset", has_text="Individual targets")
    targets.get_by_label("Serve").select_option("1")
    targets.get_by_label("to context keys").fill("alice\nbob")
    page.get_by_role("button", name="Add rule").click()
    rule = page.locator("li.rule").first
    rule.get_by_label("Operator").select_option("segment_match")
    rule.get_by_label("Values").fill("beta")
    rule.get_by_label("then serve").select_option("2")
    page.get_by_role("button", name="Save changes").click()
    expect(page.locator("#status")).to_contain_text("Saved version 2")
    doc = console_server.api("GET", f"/environments/{env}/flags/color")
    assert doc["variations"] == ["red", "blue", "green"]
    assert doc["prerequisites"] == [{"key": "base", "variation": 0}]
    assert doc["targets"] == [{"variation": 1, "values": ["alice", "bob"]}]
    assert doc["rules"][0]["clauses"][0]["op"] == "segment_match"
    assert doc["rules"][0]["clauses"][0]["values"] == ["beta"]
    assert doc["rules"][0]["variation"] == 2
    expect(page.locator("#flag-serving")).to_contain_text("red · 1 rule · 1 target")

    page.get_by_role("button", name="Delete flag").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    expect(page).to_have_url(re.compile(rf"/envs/{env}/flags$"))
    expect(page.locator('tr[data-key="color"]')).to_have_count(0)
    assert console_server.request("GET", f"/api/v1/environments/{env}/flags/color")[0] == 404


def test_client_side_checkbox_and_client_key(page: Any, console_server: InProcessServer) -> None:
    key = new_key("web-banner")
    console_server.api("POST", "/environments/production/flags", bool_flag(key))
    sign_in(page, console_server, "/keys")
    page.get_by_label("Name").fill(f"web-{secrets.token_hex(2)}")
    page.get_by_label("Kind").select_option("client")
    page.get_by_role("button", name="Create key").click()
    secret_box = page.locator("#secret-value")
    expect(secret_box).to_have_value(re.compile(r"^fw_client_"))
    secret = secret_box.input_value()

    def ofrep() -> int:
        status, _ = console_server.request(
            "POST",
            f"/ofrep/v1/evaluate/flags/{key}",
            {"context": {"targetingKey": "u"}},
            key=secret,
        )
        return status

    assert ofrep() == 404  # not visible to client-side keys until marked
    page.goto(console_server.url + f"/envs/production/flags/{key}")
    box = page.get_by_label("Visible to client-side keys (web pages, OFREP)")
    expect(box).not_to_be_checked()
    box.check()
    page.get_by_role("button", name="Save changes").click()
    expect(page.locator("#status")).to_contain_text("Saved version 2")
    doc = console_server.api("GET", f"/environments/production/flags/{key}")
    assert doc["client_side"] is True
    assert ofrep() == 200
    page.reload()
    expect(page.get_by_label("Visible to client-side keys (web pages, OFREP)")).to_be_checked()
