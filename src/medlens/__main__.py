"""``python -m medlens``: the same command as ``medlens`` (for environments without the script)."""

from medlens.cli import main

main()
