"""The shared shape of every attention: timm's constructor, ``forward(x, hw)``.

FLOP convention (used by every ``core_flops``): a matmul of (M x K) by (K x N)
is 2*M*N*K; a depthwise k x k convolution is 2*k*k per output element.
Softmax, exp, normalisation and other elementwise work is *not* counted, which
is also what ``torch.utils.flop_counter.FlopCounterMode`` counts, so the two
can be compared exactly on matmul-only paths.
"""
from __future__ import annotations

import copy
import types

import torch
import torch.nn as nn

from .errors import Reason
from .functional import apply_lepe, divisors, dwconv_flops, exact_core_flops, lepe_conv

PARTS = ("attend", "full")  # what a count or estimate covers: the core (+ LePE), or qkv + that + proj


def check_heads(dim: int, num_heads: int) -> int:
    """Head width, or a clear error when heads do not divide dim."""
    if num_heads < 1 or dim % num_heads:
        raise ValueError(f"heads={num_heads} does not divide dim={dim}; valid heads for dim={dim}: {divisors(dim)}")
    return dim // num_heads


def check_impl(what: str, impl: str, impls: tuple[str, ...]) -> str:
    """``impl`` when it is one of ``impls``, else a ValueError naming them."""
    if impl not in impls:
        raise ValueError(f"unknown {what} impl {impl!r}; valid impls: {', '.join(impls)}")
    return impl


class Attention(nn.Module):
    """Base class: qkv -> ``attend`` (core [+ LePE]) -> merge heads -> proj.

    Subclasses implement ``core(q, k, v, hw)`` on (B, h, N, d) tensors and
    ``core_flops(batch, hw)``. ``attend`` is the core on given q, k, v (with any LePE).
    """

    registry_name: str = ""
    #: True when ``core`` is exactly softmax(QK^T/sqrt(d))V over all tokens.
    exact: bool = False

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, lepe: bool = False):
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = check_heads(dim, num_heads)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)  # output laid out as (3, h, d)
        self.proj = nn.Linear(dim, dim)
        self.lepe = lepe_conv(dim) if lepe else None

    # -- the computation -------------------------------------------------
    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        B, N, C = x.shape
        if N != hw[0] * hw[1]:
            raise ValueError(f"x has N={N} tokens but hw={tuple(hw)} gives {hw[0] * hw[1]}")
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, h, N, d)
        out = self.attend(q, k, v, hw)  # (B, h, N, d)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        out = self.core(q, k, v, hw)
        if self.lepe is not None:
            out = out + apply_lepe(self.lepe, v, hw)
        return out

    def core(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        raise NotImplementedError

    # -- can this case run here? ---------------------------------------------
    def reasons(self, *, hw: tuple[int, int], device: torch.device | None = None, dtype: torch.dtype | None = None,
                batch: int = 1) -> list[Reason]:
        """Everything that stops this case, in one answer (empty when it can run).
        Kinds: ``invalid`` (an option cannot work on grid ``hw``; the text names the
        valid values), ``unavailable`` (a package is missing or unusable here),
        ``unsupported`` (this device, dtype or size). With ``device`` None only the
        grid is judged (``invalid`` reasons)."""
        return []

    @classmethod
    def whole_grid_options(cls, hw: tuple[int, int]) -> dict:
        """Options that make one window / stripe / block cover the whole grid ``hw``
        (a backbone's global last stage); empty when the attention is global already."""
        return {}

    def float64_reference(self) -> "Attention":
        """A float64 copy computing the same function with the same weights, for
        ``rel_err_vs_fp64``. Attentions whose fast path has no float64 switch
        the copy to their reference path."""
        return copy.deepcopy(self).double()

    def run_info(self) -> dict[str, str]:
        """Facts learnt while running; ``impl_ran``: the kernel or code path that
        actually executed (plain PyTorch ops: ``torch``)."""
        return {"impl_ran": "torch"}

    # -- memory estimate (to skip cases that cannot fit, before running) ---
    def core_transient_elements(self, batch: int, hw: tuple[int, int]) -> int:
        """Elements of the largest intermediates ``core`` materialises beyond q, k, v, out."""
        return 0

    def memory_estimate(self, batch: int, hw: tuple[int, int], itemsize: int, part: str = "full") -> int:
        """Rough lower bound on the bytes one call of ``attend`` (``part="attend"``) or of
        the full layer (``"full"``) needs: inputs, q/k/v/out and the core's materialised
        intermediates. Weights are not counted."""
        n = hw[0] * hw[1]
        elements = 4 * batch * n * self.dim + self.core_transient_elements(batch, hw)
        if _part(part) == "full":
            elements += 5 * batch * n * self.dim  # x, qkv (3C), proj output
        return elements * itemsize

    # -- analytic FLOPs (convention in the module docstring) -------------
    def core_flops(self, batch: int, hw: tuple[int, int]) -> int:
        raise NotImplementedError

    def score_recompute_flops(self, batch: int, hw: tuple[int, int]) -> int:
        """FLOPs a backward spends recomputing attention scores (QK^T again):
        fused kernels keep no score matrix for the backward. 0 when none."""
        return 0

    def backward_flops(self, batch: int, hw: tuple[int, int], part: str = "full") -> int:
        """Analytic FLOPs of the backward pass, by one convention: every matmul and
        convolution of the forward costs two in the backward (the gradients of
        both operands), plus any recomputation (``score_recompute_flops``)."""
        return 2 * self.flops(batch, hw, part) + self.score_recompute_flops(batch, hw)

    def flops(self, batch: int, hw: tuple[int, int], part: str = "full") -> int:
        """Analytic FLOPs of ``attend`` (``part="attend"``: the core and any LePE) or of
        ``forward`` (``"full"``: qkv and proj too)."""
        n = hw[0] * hw[1]
        total = self.core_flops(batch, hw)
        if self.lepe is not None:
            total += dwconv_flops(batch, self.dim, hw)
        if _part(part) == "full":
            total += 2 * batch * n * self.dim * 3 * self.dim  # qkv
            total += 2 * batch * n * self.dim * self.dim  # proj
        return total


def _part(part: str) -> str:
    if part not in PARTS:
        raise ValueError(f"part={part!r}; valid: {', '.join(PARTS)}")
    return part


class ExactAttention(Attention):
    """softmax(QK^T / sqrt(d)) V over all N tokens. FLOPs 4*B*h*N^2*d (+ LePE).
    ``fused``: a kernel that keeps no score matrix, so its backward computes
    QK^T again. ``_ran`` says which kernel ran (``run_info``); the float64
    reference computes the same function in plain torch (any backend's float64
    copy would be refused by fused kernels)."""

    exact = True
    fused = True
    _ran = ""

    def run_info(self):
        return {"impl_ran": self._ran or "torch"}

    def float64_reference(self) -> "Attention":
        m = super().float64_reference()
        m.core = types.MethodType(_plain_softmax_core, m)  # this copy only
        return m

    def core_flops(self, batch, hw):
        return exact_core_flops(batch, self.num_heads, self.head_dim, hw)

    def score_recompute_flops(self, batch, hw):
        return self.core_flops(batch, hw) // 2 if self.fused else 0


def _plain_softmax_core(self, q, k, v, hw):
    """softmax(QK^T / sqrt(d)) V, materialised: the float64 reference of every exact attention."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    return scores.softmax(dim=-1) @ v
