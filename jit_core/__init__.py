"""jit_core: the JiT baseline (Li & He, arXiv 2511.13720) with pluggy hook points for co-denoising plugins."""
from jit_core.hookspecs import hookimpl
from jit_core.model.streams import Stream

__version__ = "0.1.0"
__all__ = ["hookimpl", "Stream", "__version__"]
