"""Where ``streaminfer produce`` gets records: files (JSONL/CSV) and synthetic generators."""

from streaminfer.connectors.sources.files import FileSource, LineError
from streaminfer.connectors.sources.synthetic import SyntheticClassifier, SyntheticRatings

__all__ = ["FileSource", "LineError", "SyntheticClassifier", "SyntheticRatings"]
