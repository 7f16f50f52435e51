"""mlc-dist: distributed training and batch scoring for multi-label text classification."""

__version__ = "0.1.0"
