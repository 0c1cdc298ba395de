"""``python -m migrate`` is the ``xmig`` command."""

from migrate.cli.main import main

main()
