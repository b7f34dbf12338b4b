"""The README's Python example, as a complete script.

Run it against a server (the SDK key is printed on the server's first start)::

    FLAGWIRE_SDK_KEY=fw_sdk_... python examples/quickstart.py

It prints how two flags evaluate for one user, then each change of
``new-checkout`` until Ctrl-C.  Flip the flag (``flagwire flags off
new-checkout``) and watch it change.
"""

import asyncio
import contextlib
import os
import tempfile
from pathlib import Path

from flagwire import FlagClient

URL = os.environ.get("FLAGWIRE_URL", "http://127.0.0.1:8080")
SDK_KEY = os.environ["FLAGWIRE_SDK_KEY"]
# The last flags received, served if the server is down when the app starts.
PERSIST = Path(tempfile.gettempdir()) / "flagwire-quickstart.json"


async def main() -> None:
    user = {"key": "user-42", "email": "ada@example.com", "country": "NZ"}
    async with FlagClient(URL, SDK_KEY, persist_path=PERSIST) as flags:
        print("client status:", flags.status)
        if flags.bool_variation("new-checkout", user, False):  # sync, no I/O, never raises
            print("new-checkout is on for", user["key"])
        else:
            print("new-checkout is off for", user["key"])
        detail = flags.variation_detail("checkout-theme", user, "classic")
        print("checkout-theme:", detail.value, "because", detail.reason)

        print("watching new-checkout (Ctrl-C to stop)")
        async for change in flags.changes("new-checkout"):  # react to changes
            on = flags.bool_variation("new-checkout", user, False)
            print(f"new-checkout version {change.new_version}: {'on' if on else 'off'}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
