"""Exact softmax attention over all N tokens, with torch alone: materialised,
torch SDPA (each backend) and FlexAttention.

FLOPs (all): QK^T and AV, 2 * 2*N*N*d per head -> 4*B*h*N^2*d (+ LePE). The
fused kernels do the same arithmetic without materialising the N x N scores;
the counts are analytic (a profiler cannot see inside them).
"""
from __future__ import annotations

import math

import torch

from .base import ExactAttention, check_impl
from .errors import Reason
from .functional import FLEX_COMPILE_S, SDPA_IMPLS, compiled_cpu_flex_problem, flex_attend, flex_uses_compile, sdpa
from .registry import register_attention


@register_attention(
    "vanilla",
    family="exact",
    complexity="O(N^2 d), N^2 memory",
    source="Vaswani et al. 2017; the paper's VaniATT with lepe=true",
)
class VanillaAttention(ExactAttention):
    """Materialised softmax(QK^T / sqrt(d)) V; ``lepe=True`` adds CSWin's LePE on V."""

    fused = False  # autograd keeps the scores

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, lepe: bool = False):
        super().__init__(dim, num_heads, qkv_bias, lepe)

    def core(self, q, k, v, hw):
        attn = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)  # (B, h, N, N)
        return attn.softmax(dim=-1) @ v

    def core_transient_elements(self, batch, hw):
        n = hw[0] * hw[1]
        return 2 * batch * self.num_heads * n * n  # scores and their softmax


@register_attention(
    "sdpa",
    family="exact",
    complexity="O(N^2 d), O(N) memory (fused)",
    needs="torch; impl=flash/cudnn/efficient need CUDA (flash: flash_cpu on CPU)",
    source="torch.nn.functional.scaled_dot_product_attention",
)
class SdpaAttention(ExactAttention):
    """torch's fused SDPA. ``impl``: auto (torch picks), flash, efficient, cudnn or math.

    The kernel that actually ran is recorded by the harness (it watches the
    aten op that SDPA dispatches to), so ``auto`` is never a guess.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, lepe: bool = False, impl: str = "auto"):
        super().__init__(dim, num_heads, qkv_bias, lepe)
        self.impl = check_impl("SDPA", impl, SDPA_IMPLS)
        self.fused = impl != "math"  # every backend but math keeps no score matrix

    def reasons(self, *, hw, device=None, dtype=None, batch=1):
        if device is None:
            return []
        out = []
        if device.type != "cuda" and self.impl in ("efficient", "cudnn"):
            out.append(f"SDPA backend {self.impl!r} needs CUDA (device is {device.type})")
        if device.type == "cuda" and self.impl in ("flash", "cudnn") and dtype not in (torch.float16, torch.bfloat16):
            out.append(f"SDPA backend {self.impl!r} on CUDA runs float16/bfloat16 only, not {dtype}")
        return [Reason("unsupported", r) for r in out]

    def core(self, q, k, v, hw):
        self._ran = "sdpa"  # the kernel that ran is read from the profiler by the caller
        return sdpa(q, k, v, self.impl)


FLEX_IMPLS = ("auto", "compiled", "eager")


@register_attention(
    "flex",
    family="exact",
    complexity="O(N^2 d), O(N) memory when compiled",
    needs="torch >= 2.5; compiled on CUDA (head_dim >= 16); CPU forward only",
    source="torch.nn.attention.flex_attention (Dong et al. 2024, FlexAttention)",
)
class FlexAttention(ExactAttention):
    """FlexAttention with no mask and no score_mod. ``impl``: ``auto``
    (compiled on CUDA, eager elsewhere), ``compiled`` or ``eager``. The
    compiled function is built lazily on the first call and shared.
    FLOPs 4*B*h*N^2*d (+ LePE)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, lepe: bool = False, impl: str = "auto"):
        super().__init__(dim, num_heads, qkv_bias, lepe)
        self.impl = check_impl("flex", impl, FLEX_IMPLS)

    def _compiled(self) -> bool | None:
        return None if self.impl == "auto" else self.impl == "compiled"

    def reasons(self, *, hw, device=None, dtype=None, batch=1):
        # A CPU backward is refused by flex_attend itself, with torch's reason.
        if device is None:
            return []
        reasons = []
        compiled = flex_uses_compile(device, self._compiled())
        if compiled and device.type == "cuda" and self.head_dim < 16:
            reasons.append(f"compiled FlexAttention on CUDA needs head_dim >= 16 (tl.dot), not {self.head_dim}")
        if compiled and device.type == "cpu" and dtype not in (torch.float32, torch.float16, torch.bfloat16):
            reasons.append(f"compiled FlexAttention on CPU runs float32/float16/bfloat16, not {dtype}")
        problem = compiled_cpu_flex_problem(device, compiled, hw[0] * hw[1])
        return [Reason("unsupported", r) for r in reasons + ([problem] if problem else [])]

    def core(self, q, k, v, hw):
        compiled = self._compiled()
        out = flex_attend(q, k, v, compiled=compiled)
        if flex_uses_compile(q.device, compiled):
            took = FLEX_COMPILE_S.get(q.device.type)
            self._ran = "torch.compile(flex_attention)" + (f"; first compiled call in this process took {took:.1f} s" if took else "")
        else:
            self._ran = "eager flex_attention (unfused: materialises the N x N scores)"
        return out
