"""Exact softmax attention over all N tokens: materialised, and torch SDPA.

FLOPs (both): QK^T and AV, 2 * 2*N*N*d per head -> 4*B*h*N^2*d (+ LePE).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import Attention, Unsupported
from .registry import register_attention


def exact_core_flops(batch: int, heads: int, head_dim: int, hw: tuple[int, int]) -> int:
    n = hw[0] * hw[1]
    return 4 * batch * heads * n * n * head_dim


@register_attention(
    "vanilla",
    family="exact",
    complexity="O(N^2 d), N^2 memory",
    source="Vaswani et al. 2017; the paper's VaniATT with lepe=true",
)
class VanillaAttention(Attention):
    """Materialised softmax(QK^T / sqrt(d)) V; ``lepe=True`` adds CSWin's LePE on V."""

    exact = True

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, lepe: bool = False):
        super().__init__(dim, num_heads, qkv_bias, lepe)

    def core(self, q, k, v, hw):
        attn = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)  # (B, h, N, N)
        return attn.softmax(dim=-1) @ v

    def core_flops(self, batch, hw):
        return exact_core_flops(batch, self.num_heads, self.head_dim, hw)

    def core_transient_elements(self, batch, hw):
        n = hw[0] * hw[1]
        return 2 * batch * self.num_heads * n * n  # scores and their softmax


SDPA_BACKENDS = ("auto", "flash", "efficient", "cudnn", "math")


def _sdpa_backend_enum(name: str):
    from torch.nn.attention import SDPBackend

    return {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }[name]


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """F.scaled_dot_product_attention pinned to ``backend``; a backend that
    cannot run the case raises ``Unsupported`` with torch's reason."""
    if backend == "auto":
        return F.scaled_dot_product_attention(q, k, v)
    from torch.nn.attention import sdpa_kernel

    try:
        with sdpa_kernel(_sdpa_backend_enum(backend)):
            return F.scaled_dot_product_attention(q, k, v)
    except RuntimeError as e:
        if "No available kernel" in str(e) or "not supported" in str(e).lower():
            first = str(e).strip().splitlines()[0]
            raise Unsupported(
                f"SDPA backend {backend!r} cannot run {q.dtype} head_dim={q.shape[-1]} on {q.device.type}: {first}"
            ) from None
        raise


@register_attention(
    "sdpa",
    family="exact",
    complexity="O(N^2 d), O(N) memory (fused)",
    needs="torch; flash/cudnn/efficient backends need CUDA",
    source="torch.nn.functional.scaled_dot_product_attention",
)
class SdpaAttention(Attention):
    """torch's fused SDPA. ``backend``: auto, flash, efficient, cudnn or math.

    The kernel that actually ran is recorded by the harness (it watches the
    aten op that SDPA dispatches to), so ``auto`` is never a guess.
    """

    exact = True

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, lepe: bool = False, backend: str = "auto"):
        super().__init__(dim, num_heads, qkv_bias, lepe)
        if backend not in SDPA_BACKENDS:
            raise ValueError(f"unknown SDPA backend {backend!r}; valid backends: {', '.join(SDPA_BACKENDS)}")
        self.backend = backend

    def core(self, q, k, v, hw):
        return sdpa(q, k, v, self.backend)

    def unsupported_reasons(self, *, device, dtype, hw, batch):
        reasons = []
        if device.type != "cuda" and self.backend in ("efficient", "cudnn"):
            reasons.append(f"SDPA backend {self.backend!r} needs CUDA (device is {device.type})")
        if device.type == "cuda" and self.backend in ("flash", "cudnn") and dtype not in (torch.float16, torch.bfloat16):
            reasons.append(f"SDPA backend {self.backend!r} on CUDA runs float16/bfloat16 only, not {dtype}")
        return reasons

    def core_flops(self, batch, hw):
        return exact_core_flops(batch, self.num_heads, self.head_dim, hw)
