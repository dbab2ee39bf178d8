"""decodekit: fast, reproducible kernels and decoders for every family of LLM text generation."""

from decodekit import ops
from decodekit._info import info

__version__ = "0.1.0"
__all__ = ["info", "ops", "__version__"]
