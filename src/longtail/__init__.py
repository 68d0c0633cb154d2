"""longtail: deep learning on class-imbalanced (long-tailed) data."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("longtail")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0+src"

from .counts import ClassCounts, profile_counts
from .errors import LongtailError

__all__ = ["ClassCounts", "LongtailError", "profile_counts", "__version__"]
