"""Fast paths (Triton kernels), each computing exactly an attention's
reference function and checked against it (tests/test_elfatt_fast.py).

Importing this package imports torch only; triton is imported when a fast
path first runs (``elfatt_fast.load_kernels``), so a machine without triton
still imports ``attentions`` and gets ``Unavailable`` with the reason.
"""
from .elfatt_fast import elfatt_attend, fast_reasons, interpreting, triton_missing

__all__ = ["elfatt_attend", "fast_reasons", "interpreting", "triton_missing"]
