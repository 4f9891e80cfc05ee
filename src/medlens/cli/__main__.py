"""``python -m medlens.cli``: the same command as ``medlens``."""

from medlens.cli import main

main()
