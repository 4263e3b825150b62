"""Errors fxcons raises on bad input. Each message is one line that says what to do."""


class FxconsError(Exception):
    """Base class: user-facing errors (the CLI prints them as one line, no traceback)."""


class CaptureError(FxconsError):
    """The model could not be captured as a graph."""


class SpecError(FxconsError):
    """A model spec (``torchvision:resnet18``, ``file.py:Factory``...) names no model."""


class LawInputError(FxconsError):
    """Parameters given to evaluate a law set are missing, mis-shaped or not finite."""
