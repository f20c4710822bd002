"""Linear attentions: cost linear in the number of tokens N.

``efficient_linear`` FLOPs: the d x d context k_hat^T v (2*N*d*d) and
q_hat @ context (2*N*d*d) per head -> 4*B*h*N*d^2 (+ LePE when on).
"""
from __future__ import annotations

import torch

from .base import Attention
from .registry import register_attention


def efficient_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Shen et al.'s efficient attention, ELFATT's global branch (without LePE).

    q_hat = softmax over channels, k_hat = softmax over tokens, out = q_hat (k_hat^T v).
    No 1/sqrt(d) scale. (B, h, N, d) -> (B, h, N, d).
    """
    q_hat = q.softmax(dim=-1)
    # Softmax of K over tokens, taken on the (B, h, d, N) view: the reduction
    # then runs along the last axis instead of striding over N (see GPU.md).
    k_hat_t = k.transpose(-2, -1).softmax(dim=-1)  # (B, h, d, N)
    context = k_hat_t @ v  # (B, h, d, d)
    return q_hat @ context


def efficient_flops(batch: int, heads: int, head_dim: int, hw: tuple[int, int]) -> int:
    return 4 * batch * heads * hw[0] * hw[1] * head_dim * head_dim


@register_attention(
    "efficient_linear",
    family="linear",
    complexity="O(N d^2)",
    source="Shen et al. 2021, Efficient Attention (ELFATT's global branch)",
)
class EfficientLinearAttention(Attention):
    """ELFATT's global branch on all heads. ``lepe=True`` adds its LePE term,
    making it exactly ELFATT with ``global_heads == heads``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, lepe: bool = False):
        super().__init__(dim, num_heads, qkv_bias, lepe)

    def core(self, q, k, v, hw):
        return efficient_attention(q, k, v)

    def core_flops(self, batch, hw):
        return efficient_flops(batch, self.num_heads, self.head_dim, hw)
