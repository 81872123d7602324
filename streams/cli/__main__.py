"""``python -m streams.cli``: the ``streaminfer`` command without its entry-point script.

``streaminfer demo`` starts its workers this way with ``sys.executable``, so they run in the
same interpreter (and virtual environment) as the demo itself.
"""

from streaminfer.streams.cli import main

if __name__ == "__main__":
    main(prog_name="streaminfer")
