"""Linear attentions: cost linear in the number of tokens N (non-causal, vision setting).

``efficient_linear`` is Shen et al.'s efficient attention, ELFATT's global
branch: softmax of q over channels, of k over tokens, the d x d context first.
FLOPs 4*B*h*N*d^2 (context k_hat^T v and q_hat @ context, 2*N*d*d each) + LePE.

The others but ``agent`` are kernelised attention: features phi(q), phi(k)
of width m (m = d except ``performer``), and

    out_i = phi(q_i) (sum_j phi(k_j)^T v_j) / (phi(q_i) . sum_j phi(k_j) + eps)

computed context-first, so the cost is linear in N.

FLOPs (convention in ``attentions/base.py``: matmul 2*M*N*K, depthwise k x k
conv 2*k*k per output element; elementwise work, reductions and pooling are
not counted, exactly like ``torch.utils.flop_counter.FlopCounterMode``):
- kernel attention, per head: context phi(K)^T V 2*N*m*d, phi(Q) @ context
  2*N*m*d, normaliser phi(Q) @ sum_j phi(k_j) 2*N*m  ->  B*h*(4*N*m*d + 2*N*m).
- ``linear_elu``, ``relu_linear``: the above with m = d (+ LePE when on).
- ``performer``: + the random projections of Q and K, 2 * 2*N*d*m per head
  -> B*h*(8*N*m*d + 2*N*m) (+ LePE).
- ``focused_linear``: kernel attention with m = d + its k x k DWC on V,
  2*k*k*B*C*N.
- ``agent``: n agents; A K^T, (.)V, Q A^T, (.)(agent V) are 2*N*n*d each ->
  8*B*h*N*n*d, + its 3x3 DWC on V, 18*B*C*N.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import Attention
from .functional import dwconv_flops, efficient_attention, from_map, to_map
from .registry import register_attention


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


# --------------------------------------------------------------------------

def kernel_attention(phi_q: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor, eps: float) -> torch.Tensor:
    """phi_q (phi_k^T v) / (phi_q . sum_j phi_k_j + eps); (B,h,N,m), (B,h,N,m), (B,h,N,d) -> (B,h,N,d).

    The normaliser is a matmul (not an elementwise product + sum) so that it is
    counted by FlopCounterMode as well as analytically.
    """
    context = phi_k.transpose(-2, -1) @ v  # (B, h, m, d)
    k_sum = phi_k.sum(dim=-2).unsqueeze(-1)  # (B, h, m, 1)
    return (phi_q @ context) / (phi_q @ k_sum + eps)


def kernel_attention_flops(batch: int, heads: int, n: int, m: int, d: int) -> int:
    return batch * heads * (4 * n * m * d + 2 * n * m)


# --------------------------------------------------------------------------
@register_attention(
    "linear_elu",
    family="linear",
    complexity="O(N d^2)",
    source="Katharopoulos et al. 2020, Transformers are RNNs",
)
class LinearEluAttention(Attention):
    """Kernel attention with phi(x) = elu(x) + 1 (> 0, so the normaliser is
    positive; eps = 1e-6 only guards underflow). No 1/sqrt(d) scale, as in
    the paper. ``lepe=True`` adds the LePE term.
    FLOPs B*h*(4*N*d^2 + 2*N*d) (+ LePE)."""

    eps = 1e-6

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, lepe: bool = False):
        super().__init__(dim, num_heads, qkv_bias, lepe)

    def core(self, q, k, v, hw):
        return kernel_attention(F.elu(q) + 1, F.elu(k) + 1, v, self.eps)

    def core_flops(self, batch, hw):
        return kernel_attention_flops(batch, self.num_heads, hw[0] * hw[1], self.head_dim, self.head_dim)


# --------------------------------------------------------------------------
@register_attention(
    "relu_linear",
    family="linear",
    complexity="O(N d^2)",
    source="Cai et al. 2023, EfficientViT (ReLU linear attention of LiteMLA)",
)
class ReluLinearAttention(Attention):
    """EfficientViT's ReLU linear attention: phi = relu, eps = 1e-15 (theirs).
    Half-precision inputs are computed in float32 and cast back, as
    EfficientViT does, because 1e-15 vanishes in fp16 and an all-zero relu(q_i)
    would give 0/0. EfficientViT's multi-scale aggregation (extra depthwise
    convs building more q/k/v scales) is out of scope: this is the attention
    core on the given q, k, v. ``lepe=True`` adds the LePE term.
    FLOPs B*h*(4*N*d^2 + 2*N*d) (+ LePE)."""

    eps = 1e-15

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, lepe: bool = False):
        super().__init__(dim, num_heads, qkv_bias, lepe)

    def core(self, q, k, v, hw):
        dtype = q.dtype
        if dtype in (torch.float16, torch.bfloat16):
            q, k, v = q.float(), k.float(), v.float()
        return kernel_attention(F.relu(q), F.relu(k), v, self.eps).to(dtype)

    def core_flops(self, batch, hw):
        return kernel_attention_flops(batch, self.num_heads, hw[0] * hw[1], self.head_dim, self.head_dim)


# --------------------------------------------------------------------------
def orthogonal_gaussian_features(num_features: int, dim: int, seed: int) -> torch.Tensor:
    """(m, d) float64 rows for FAVOR+: blocks of d orthogonal directions (QR of a
    seeded Gaussian, signs fixed by diag(R) so each block is Haar-distributed),
    each row rescaled to the norm of an independent d-dim Gaussian (chi(d)), so
    every row is marginally N(0, I_d) while rows within a block stay orthogonal."""
    g = torch.Generator().manual_seed(seed)
    blocks = []
    for _ in range(math.ceil(num_features / dim)):
        qmat, r = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
        qmat = qmat * torch.sign(torch.diagonal(r)).unsqueeze(0)  # columns orthonormal, Haar
        blocks.append(qmat.T)
    w = torch.cat(blocks)[:num_features]
    norms = torch.randn(num_features, dim, generator=g, dtype=torch.float64).norm(dim=1)
    return w * norms.unsqueeze(1)


def favor_features(x: torch.Tensor, w: torch.Tensor, is_query: bool) -> torch.Tensor:
    """Positive random features exp(w.x - |x|^2/2 - c) / sqrt(m), x = data * d^-1/4.

    The stabiliser c is the max exponent: per token for queries (it cancels
    between numerator and normaliser of that query), one value per (batch,
    head) for keys (a common factor of all keys cancels too). It is detached:
    the output does not depend on it. (B, h, N, d), (m, d) -> (B, h, N, m).
    """
    x = x * x.shape[-1] ** -0.25
    expo = x @ w.transpose(0, 1).to(x.dtype) - 0.5 * x.square().sum(dim=-1, keepdim=True)  # (B, h, N, m)
    dims = (-1,) if is_query else (-2, -1)
    c = expo.detach().amax(dim=dims, keepdim=True)
    return torch.exp(expo - c) * w.shape[0] ** -0.5


@register_attention(
    "performer",
    family="linear",
    complexity="O(N m d), m random features",
    source="Choromanski et al. 2021, Performer (FAVOR+)",
)
class PerformerAttention(Attention):
    """FAVOR+: an unbiased estimate of softmax(QK^T/sqrt(d)) V with
    ``num_features`` positive orthogonal random features, drawn once from
    ``feature_seed`` at construction (buffer ``features``, shared by all heads,
    never redrawn). Default m = 256: the paper's usual setting, and about
    d ln d (= 266) for ViT's d = 64. eps = 1e-6 in the normaliser.
    ``lepe=True`` adds the LePE term.
    FLOPs B*h*(8*N*m*d + 2*N*m): projections 4*N*d*m, kernel attention (+ LePE)."""

    eps = 1e-6

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        lepe: bool = False,
        num_features: int = 256,
        feature_seed: int = 0,
    ):
        super().__init__(dim, num_heads, qkv_bias, lepe)
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features={num_features!r} is invalid; valid: a positive integer (e.g. 64, 256)")
        self.num_features = num_features
        self.feature_seed = feature_seed
        w = orthogonal_gaussian_features(num_features, self.head_dim, feature_seed)
        self.register_buffer("features", w.to(torch.get_default_dtype()))  # (m, d)

    def core(self, q, k, v, hw):
        return kernel_attention(favor_features(q, self.features, True), favor_features(k, self.features, False), v, self.eps)

    def core_flops(self, batch, hw):
        n, m, d = hw[0] * hw[1], self.num_features, self.head_dim
        return 2 * (2 * batch * self.num_heads * n * d * m) + kernel_attention_flops(batch, self.num_heads, n, m, d)


# --------------------------------------------------------------------------
@register_attention(
    "focused_linear",
    family="linear",
    complexity="O(N d^2)",
    source="Han et al. 2023, FLatten Transformer (focused linear attention)",
)
class FocusedLinearAttention(Attention):
    """Focused linear attention + depthwise-conv rank restoration.

    Choices (paper and official code agree unless noted):
    - phi(x) = f_p(relu(x) + 1e-6) with f_p(x) = ||x|| x^p / ||x^p|| (``focusing_factor``
      p, default 3); the 1e-6 keeps ||x^p|| > 0 when relu zeroes a token.
    - a learnable per-channel scale s = softplus(param) (param zero-initialised,
      s = ln 2) divides relu(x) before f_p, one value per channel of the h*d.
    - norms are taken per head over its d channels (the paper's per-head
      formula; the official code takes them over all C channels). For queries
      the per-token factor cancels in the normaliser anyway.
    - normaliser eps 1e-6; the context is always formed first (linear in N;
      the official code switches to QK^T first when that is cheaper).
    - DWC: depthwise ``kernel_size`` x ``kernel_size`` conv (default 5, padding
      k//2, with bias) on V over the H x W map, one d-channel conv shared by
      all heads, added to the output.
    - left out: the official code's learned absolute position embedding added
      to K (it fixes the token count) and the spatial-reduction variant.

    FLOPs B*h*(4*N*d^2 + 2*N*d) + 2*k^2*B*C*N (DWC).
    """

    eps = 1e-6

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, focusing_factor: float = 3, kernel_size: int = 5):
        super().__init__(dim, num_heads, qkv_bias, lepe=False)
        if not focusing_factor > 0:
            raise ValueError(f"focusing_factor={focusing_factor!r} is invalid; valid: a number > 0 (the paper uses 3)")
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={kernel_size!r} is invalid; valid: an odd positive integer (1, 3, 5, 7, ...)")
        self.focusing_factor = focusing_factor
        self.kernel_size = kernel_size
        self.scale = nn.Parameter(torch.zeros(dim))  # softplus -> per-channel scale
        d = self.head_dim
        self.dwc = nn.Conv2d(d, d, kernel_size, padding=kernel_size // 2, groups=d, bias=True)

    def _focus(self, x: torch.Tensor) -> torch.Tensor:
        s = F.softplus(self.scale).view(self.num_heads, 1, self.head_dim).to(x.dtype)
        x = (F.relu(x) + 1e-6) / s  # (B, h, N, d)
        xp = x.pow(self.focusing_factor)
        return xp * (x.norm(dim=-1, keepdim=True) / xp.norm(dim=-1, keepdim=True))

    def core(self, q, k, v, hw):
        B, h, N, d = v.shape
        out = kernel_attention(self._focus(q), self._focus(k), v, self.eps)
        vmap = v.transpose(-2, -1).reshape(B * h, d, hw[0], hw[1])  # each head its own image
        return out + self.dwc(vmap).reshape(B, h, d, N).transpose(-2, -1)

    def core_flops(self, batch, hw):
        n, d = hw[0] * hw[1], self.head_dim
        return kernel_attention_flops(batch, self.num_heads, n, d, d) + dwconv_flops(batch, self.dim, hw, self.kernel_size)


# --------------------------------------------------------------------------
def agent_grid(agent_num: int, hw: tuple[int, int]) -> tuple[int, int]:
    """The pooled agent grid: sqrt(agent_num) per side, capped by the token grid."""
    p = math.isqrt(agent_num)
    return min(p, hw[0]), min(p, hw[1])


@register_attention(
    "agent",
    family="linear",
    complexity="O(N n d), n agent tokens",
    source="Han et al. 2024, Agent Attention (ECCV)",
)
class AgentAttention(Attention):
    """Agent attention: agents A = adaptive average pool of Q to a p x p grid
    (p = sqrt(``agent_num``), default 49 = 7 x 7); agent aggregation
    V_A = softmax(A K^T / sqrt(d)) V; agent broadcast softmax(Q A^T / sqrt(d)) V_A;
    plus a depthwise 3x3 conv (with bias) on V over the H x W map, one weight per
    channel of C.

    On a grid smaller than p in a direction the pool is capped at the grid
    (n = min(p, H) * min(p, W) agents), so no agent is a duplicate (pooling
    up would repeat tokens and double their weight in the broadcast softmax).
    The agent bias (learned position biases sized for one resolution) is left
    out: this is the bias-free agent attention.

    FLOPs 8*B*h*N*n*d + 18*B*C*N (DWC); pooling and softmax are not counted.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, agent_num: int = 49):
        super().__init__(dim, num_heads, qkv_bias, lepe=False)
        if not isinstance(agent_num, int) or agent_num < 1 or math.isqrt(agent_num) ** 2 != agent_num:
            raise ValueError(f"agent_num={agent_num!r} is invalid; valid: a perfect square (1, 4, 9, 16, 25, 36, 49, 64, ...)")
        self.agent_num = agent_num
        self.dwc = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=True)

    def core(self, q, k, v, hw):
        h, d = q.shape[1], q.shape[-1]
        agents = from_map(F.adaptive_avg_pool2d(to_map(q, hw), agent_grid(self.agent_num, hw)), h)  # (B, h, n, d)
        scale = d**-0.5
        agent_v = ((agents * scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v  # (B, h, n, d)
        out = ((q * scale) @ agents.transpose(-2, -1)).softmax(dim=-1) @ agent_v  # (B, h, N, d)
        return out + from_map(self.dwc(to_map(v, hw)), h)

    def core_flops(self, batch, hw):
        ph, pw = agent_grid(self.agent_num, hw)
        n = hw[0] * hw[1]
        return 8 * batch * self.num_heads * n * ph * pw * self.head_dim + dwconv_flops(batch, self.dim, hw, 3)
