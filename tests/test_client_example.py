"""The examples/checkout app, driven by flagwire.testing (how an app's own tests would do it)."""

from __future__ import annotations

import httpx
from examples.checkout.app import NEW, OLD, create_app

from flagwire.testing import TestFlags


async def test_checkout_page_follows_the_flag() -> None:
    flags = TestFlags().set("new-checkout", False)
    flags.set_targets("new-checkout", True, "beta-tester")
    app = create_app(flags.client())  # READY at once: no lifespan needed
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
        assert OLD in (await http.get("/", params={"user": "alice"})).text
        assert NEW in (await http.get("/", params={"user": "beta-tester"})).text
        flags.set("new-checkout", True)
        page = (await http.get("/", params={"user": "alice"})).text
        assert NEW in page
        assert "READY" in page
