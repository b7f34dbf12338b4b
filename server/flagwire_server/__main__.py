"""``python -m flagwire_server``: the ``flagwire`` command."""

from flagwire_server.cli.main import main

main()
