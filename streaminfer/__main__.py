"""``python -m streaminfer``: the command line."""

from streaminfer.streams.cli import main

main()
