"""``jit study``: a named grid of arms x seeds, trained and evaluated through an executor, then one report."""
from .spec import Arm, Element, Study, StudyError, expand

__all__ = ["Arm", "Element", "Study", "StudyError", "expand"]
