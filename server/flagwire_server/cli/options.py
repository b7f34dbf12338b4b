"""Options every admin command shares, so ``--url``, ``--admin-key`` and ``--env``
mean the same thing (and read the same variables) everywhere."""

from __future__ import annotations

from typing import Annotated

import typer

__all__ = ["DEFAULT_URL", "Env", "Json", "Key", "Url", "Wait"]

DEFAULT_URL = "http://127.0.0.1:8080"

Url = Annotated[str, typer.Option("--url", envvar="FLAGWIRE_URL", help="server URL")]
Key = Annotated[
    str,
    typer.Option(
        "--admin-key",
        envvar="FLAGWIRE_ADMIN_KEY",
        show_default=False,
        help="admin key",
    ),
]
Json = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]
Env = Annotated[str, typer.Option("--env", "-e", envvar="FLAGWIRE_ENV", help="environment")]
Wait = Annotated[float | None, typer.Option("--wait", help="wait up to N s for clients to ack")]
