"""``python -m flagwire_server``: the ``flagwire`` command."""

from .cli import main

main()
