"""Fast paths (Triton kernels), each computing exactly an attention's
reference function and checked against it in the tests.

Importing this package imports torch only; triton is imported when a fast
path first runs (``elfatt_fast.load_kernels``), so a machine without triton
still imports ``attentions`` and gets ``Unavailable`` with the reason.
"""
from .elfatt_backward import fused_backward
from .elfatt_fast import fast_forward, fast_reasons, interpreting, taps_first, triton_missing
from .spec import ElfattSpec, LepeWeights, Tuning

__all__ = ["ElfattSpec", "LepeWeights", "Tuning", "fast_forward", "fast_reasons", "fused_backward", "interpreting",
           "taps_first", "triton_missing"]
