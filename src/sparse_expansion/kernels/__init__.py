"""Compressed sparse weights (bitmask, N:M) and CPU kernels that multiply with them.

formats.py  pure pack/unpack functions and the tensor layouts (read its docstring);
build.py    compiles csrc/ once per machine and caches it, or says why it cannot;
ops.py      the ops, dispatched to AVX2, scalar C++ or pure torch;
linear.py   CompressedLinear (an nn.Linear stand-in), CompressedExperts (routed experts),
            QuantizedLinear (a dense int8 / int4 linear) and DecodeLinear (a dense bfloat16 linear
            with a C++ decode path);
csrc/decode_step.cpp  the whole-model decode step of a Llama-shaped model (decode.LAYOUTS), one call per token, over
            these kernels (decode.py builds it from a loaded model).
"""

from .formats import CompressedWeight, choose_format, compress, decompress
from .linear import CompressedExperts, CompressedLinear, DecodeLinear, QuantizedLinear
from .ops import KernelFallbackWarning, backend, expert_linear, sparse_linear, use_backend

__all__ = ["CompressedExperts", "CompressedLinear", "CompressedWeight", "DecodeLinear", "KernelFallbackWarning",
           "QuantizedLinear", "backend", "choose_format", "compress", "decompress", "expert_linear", "sparse_linear",
           "use_backend"]
