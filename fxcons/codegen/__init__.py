"""Emitters: standalone Python (``to_python``)."""
from .python import to_python

__all__ = ["to_python"]
