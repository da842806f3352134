"""``python -m cli``: the same as the ``dihya`` console script."""

from cli.main import main

main()
