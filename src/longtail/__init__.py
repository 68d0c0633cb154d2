"""longtail: deep learning on class-imbalanced (long-tailed) data."""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("longtail")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0+src"

from .errors import LongtailError

if TYPE_CHECKING:
    from .counts import ClassCounts, profile_counts


def __getattr__(name: str) -> Any:
    """``ClassCounts`` and ``profile_counts`` load PyTorch, so they are imported when first asked for: the
    command line (``longtail --help``, ``longtail recipes``) answers without loading it."""
    if name in ("ClassCounts", "profile_counts"):
        from . import counts

        return getattr(counts, name)
    raise AttributeError(f"module 'longtail' has no attribute {name!r}")


__all__ = ["ClassCounts", "LongtailError", "profile_counts", "__version__"]
