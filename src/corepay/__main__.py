"""``python -m corepay``: the same as the ``corepay`` command."""

from corepay.cli import main

main()
