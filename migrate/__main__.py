"""``python -m migrate`` is the ``xmig`` command."""

from .view.cli import main

main()
