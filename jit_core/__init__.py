"""jit_core: the JiT baseline (Li & He, arXiv 2511.13720) with pluggy hook points for co-denoising plugins."""
from .hookspecs import hookimpl
from .streams import Stream

__version__ = "0.1.0"
__all__ = ["hookimpl", "Stream", "__version__"]
