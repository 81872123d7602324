"""Where ``streaminfer produce`` gets records: files (JSONL/CSV) and synthetic generators."""

from connectors.sources.files import FileSource, LineError
from connectors.sources.synthetic import SyntheticClassifier, SyntheticRatings

__all__ = ["FileSource", "LineError", "SyntheticClassifier", "SyntheticRatings"]
