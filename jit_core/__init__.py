"""jit_core: the JiT baseline (Li & He, arXiv 2511.13720) with pluggy hook points for co-denoising plugins."""
from jit_core.hookspecs import hookimpl

__version__ = "0.1.0"   # the one version source (pyproject.toml reads it; `jit --version` prints it)
__all__ = ["hookimpl", "Stream", "__version__"]


def __getattr__(name: str):
    # Stream lives with the model (torch); importing it lazily keeps `import jit_core` (and `jit --help`) light.
    if name == "Stream":
        from jit_core.model.streams import Stream
        return Stream
    raise AttributeError(f"module 'jit_core' has no attribute {name!r}")
