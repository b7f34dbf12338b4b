"""flagwire server: flags in Redis, every change pushed over WebSockets.

Run it with ``flagwire serve`` (:mod:`flagwire_server.cli.main`); embed it with
:func:`flagwire_server.app.create_app`.  Nothing starts at import time.
"""

__all__: list[str] = []
