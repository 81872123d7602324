"""streaminfer: Kafka-native streaming inference and online learning with PyTorch."""

from pathlib import Path as _Path

# In a source checkout the packages live in the repository's top-level folders (``streams/``,
# ``models/``, ``connectors/``, ...); an installed wheel has them inside this package. Looking in
# the checkout too makes ``streaminfer.streams`` resolve the same way in both.
_checkout = _Path(__file__).resolve().parent.parent
if not (_Path(__file__).parent / "streams").is_dir() and (_checkout / "streams").is_dir():
    __path__.append(str(_checkout))
