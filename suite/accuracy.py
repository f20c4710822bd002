"""Accuracy proxies: how far an attention is from exact softmax attention, and
from its own float64 evaluation. Both references run in float64 on batch item 0.

- ``rel_err_vs_exact`` / ``cos_sim_vs_exact``: output against exact softmax
  attention over all tokens with the same qkv and proj weights (``layer``) or
  the same q, k, v (``op``). The exact reference has no positional term, so a
  mechanism's LePE counts as part of its deviation from exact attention.
- ``rel_err_vs_fp64``: the same module, cast to float64, on the same inputs.
  A fused kernel that differs from its own float64 evaluation by more than
  rounding has a bug.

Memory stays bounded: the exact reference holds at most REFERENCE_BUDGET
bytes of scores at a time, and the caller skips the module's float64 copy
(with a note) when its estimate does not fit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn


REFERENCE_BUDGET = 256 * 2**20  # bytes of float64 scores the exact reference holds at once
EXACT_WEIGHTS = ("qkv.weight", "qkv.bias", "proj.weight", "proj.bias")  # what exact attention shares with any layer


def exact_attention_fp64(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """softmax(QK^T/sqrt(d))V in float64, queries in chunks so the scores held at
    once stay within REFERENCE_BUDGET (or ``chunk`` queries when given)."""
    q, k, v = q.double(), k.double(), v.double()
    scale = 1.0 / math.sqrt(q.shape[-1])
    if chunk is None:
        rows = math.prod(q.shape[:-2]) * k.shape[-2] * 8 * 2  # bytes of scores + softmax per query row
        chunk = max(1, REFERENCE_BUDGET // rows)
    outs = []
    for i in range(0, q.shape[-2], chunk):
        s = (q[..., i : i + chunk, :] @ k.transpose(-2, -1)) * scale
        outs.append(s.softmax(dim=-1) @ v)
    return torch.cat(outs, dim=-2)


def exact_layer_fp64(module: nn.Module, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Exact attention with ``module``'s qkv and proj weights, in float64."""
    params = dict(module.named_parameters())
    w = {n: params.get(n) for n in EXACT_WEIGHTS}
    return exact_layer_weights_fp64(x.double(), hw, module.num_heads,
                                    {k: None if t is None else t.double() for k, t in w.items()})


def exact_layer_weights_fp64(x: torch.Tensor, hw: tuple[int, int], heads: int, w: dict) -> torch.Tensor:
    """Exact attention layer on x (B, N, C) with the given qkv / proj weights (float64)."""
    B, N, C = x.shape
    qkv = nn.functional.linear(x, w["qkv.weight"], w["qkv.bias"]).reshape(B, N, 3, heads, C // heads)
    qkv = qkv.permute(2, 0, 3, 1, 4)
    out = exact_attention_fp64(qkv[0], qkv[1], qkv[2]).transpose(1, 2).reshape(B, N, C)
    return nn.functional.linear(out, w["proj.weight"], w["proj.bias"])


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double().flatten(), ref.double().flatten()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-300))


def cos_sim(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(out.double().flatten(), ref.double().flatten(), dim=0))


@dataclass(frozen=True)
class Accuracy:
    rel_err_vs_exact: float
    cos_sim_vs_exact: float
    rel_err_vs_fp64: float


def accuracy(module: nn.Module, out: torch.Tensor, inputs: tuple[torch.Tensor, ...], hw, part: str,
             own: bool = True) -> Accuracy:
    """``out`` is the module's output on ``inputs`` (batch item 0 is compared): of
    ``attend`` on (q, k, v) with ``part="attend"``, of the whole layer on (x,) with
    ``"full"``. ``own=False`` skips the module's own float64 copy (rel_err_vs_fp64 stays NaN)."""
    first = tuple(t[:1] for t in inputs)
    out0 = out[:1]
    with torch.no_grad():
        if part == "attend":
            exact = exact_attention_fp64(*first)
        else:
            exact = exact_layer_fp64(module, first[0], hw)
        own_err = math.nan
        if own:
            m64 = module.float64_reference()
            args64 = tuple(t.double() for t in first)
            own_err = rel_err(out0, m64.attend(*args64, hw) if part == "attend" else m64(*args64, hw))
    return Accuracy(rel_err(out0, exact), cos_sim(out0, exact), own_err)


# -- gradients (direction bwd / fwd_bwd) ------------------------------------------
def grads_of(forward, leaves: list[torch.Tensor], grad_out: torch.Tensor) -> list[torch.Tensor]:
    """Gradients of ``forward()`` with respect to ``leaves`` for the output gradient ``grad_out``."""
    leaves = [t.detach().requires_grad_(True) if t.grad_fn is not None or not t.requires_grad else t for t in leaves]
    with torch.enable_grad():
        out = forward(leaves)
        return list(torch.autograd.grad(out, leaves, grad_out.to(out.dtype), allow_unused=True))


def grad_errors(names: list[str], got: list[torch.Tensor], ref: list[torch.Tensor]) -> dict[str, float]:
    """Relative error of each gradient against its reference (a gradient that is None compares as zeros)."""
    out = {}
    for name, a, b in zip(names, got, ref):
        if b is None:
            continue
        a = torch.zeros_like(b) if a is None else a
        out[name] = rel_err(a.to(b.device), b)
    return out
