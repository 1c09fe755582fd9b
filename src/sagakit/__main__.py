"""``python -m sagakit``: the command line."""

from .cli import main

main()
