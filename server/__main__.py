"""``python -m server`` is the ``flatgigs`` command."""

from server.cli import main

main()
