"""fxcons: find the conservation laws of gradient-flow training in PyTorch models.

    import fxcons
    ann = fxcons.annotate(model, example_inputs=(x,))
    print(ann.report())          # the laws, grouped by module
    ann.verify()                 # the numerical oracle of LAWS.md §2
    values = ann.evaluate(model) # every law value
    src = ann.to_python()        # standalone checker (imports only torch)
"""
from .annotation import Annotation, annotate
from .capture import register_leaf
from .errors import CaptureError, FxconsError, LawInputError, SpecError
from .lawset import LawFamily, LawSet
from .monitor import monitor, Monitor
from .serialize import load

__all__ = ["annotate", "Annotation", "LawSet", "LawFamily", "register_leaf", "monitor", "Monitor",
           "load", "FxconsError", "CaptureError", "SpecError", "LawInputError"]
__version__ = "0.1.0"
