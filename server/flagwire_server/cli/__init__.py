"""The `flagwire` command: serve, and the admin commands over HTTP."""

from flagwire_server.cli.main import main

__all__ = ["main"]
