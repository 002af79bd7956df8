"""edgeports: export Transformer, SSM and hybrid language models to several backends and sweep
long-context latency, memory and energy identically across them."""

from edgeports.errors import EdgeportsError

__version__ = "0.1.0"

__all__ = ["EdgeportsError", "__version__"]
