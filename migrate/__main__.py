"""``python -m migrate`` is the ``xmig`` command."""

from .cli import main

main()
