"""cx360: a streaming customer-experience pipeline on Apache Beam."""
from cx360.version import __version__

__all__ = ["__version__"]
