"""The fused backward of ELFATT's fast path: launches of ``elfatt_triton_bwd``.

Module-free, like the forward: the layer is an ``ElfattSpec``, the LePE
weights come taps-first (``LepeWeights``) and the knobs are ``Tuning``'s
``bwd_*`` fields. What the forward keeps for it (``fast_forward(..., stats=)``)
is no more than per-row and per-channel statistics beside the inputs and the
output:

- ``ctx`` (B*G, BD, BD), input dtype: the global context k_hat^T v, zero-padded
  to BD = next power of two >= max(16, width);
- ``kstats`` (B*G, BD) fp32: K's per-channel base-2 log-sum-exp over tokens,
  k_hat[n, c] = exp2(k[n, c] * log2(e) - kstats[c]);
- ``lse`` (B, HL, N) fp32: each local query row's base-2 log-sum-exp of its
  scores scaled by log2(e)/sqrt(width).

No score matrix beyond one tile on chip; the LePE part of the output is
recomputed from v. Reductions over tokens and batch (the context gradient,
the LePE weight gradients) go through per-program fp32 partials merged in a
fixed order: no atomics, so two runs give bitwise-equal gradients.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from . import elfatt_fast as ef
from .elfatt_fast import Launch, _launch, choose, token_splits
from .spec import ElfattSpec, LepeWeights, Tuning

LOG2E = 1.4426950408889634
CR = 8  # d_ctx rows per combine program
NTAP = 16  # rows of a LePE record (9 taps, the bias, padding): the kernels' NTAP


class Grads(NamedTuple):
    """dq, dk, dv (B, h, N, d) in q's dtype; LePE gradients taps-first (9, C)
    and (C,) in the weights' dtypes, None for an absent branch."""

    dq: torch.Tensor
    dk: torch.Tensor
    dv: torch.Tensor
    dw_global: torch.Tensor | None
    dbias_global: torch.Tensor | None
    dw_local: torch.Tensor | None
    dbias_local: torch.Tensor | None


def load_backward_kernels():
    """The backward's Triton kernels (``elfatt_triton_bwd``), as ``elfatt_fast._load`` says."""
    return ef._load("elfatt_triton_bwd")


def tiles(D: int, tuning: Tuning, N: int, L: int | None = None) -> dict:
    """Tiles, warps and stages for branch width D. The defaults compile for
    sm_90 without spills at every width up to 128: the token reductions unroll
    their nine LePE taps (8 warps and, at width 128, 32-token tiles keep them
    at 128 registers); width 128 needs 8 warps in the global tile and dk-dv
    kernels (4 spill)."""
    wide = ef._pow2(D) > 64
    cap_n, cap_l = ef._pow2(N), ef._pow2(L or N)
    t = tuning
    return {"red_bm": choose(t.bwd_red_bm, min(32 if wide else 64, cap_n)), "red_warps": choose(t.bwd_red_warps, 8),
            "tile_bm": choose(t.bwd_tile_bm, min(64, cap_n)), "tile_warps": choose(t.bwd_tile_warps, 8 if wide else 4),
            "kv_bm": choose(t.bwd_kv_bm, min(64, cap_l)), "kv_bn": choose(t.bwd_kv_bn, min(64, cap_l)),
            "kv_warps": choose(t.bwd_kv_warps, 8 if wide else 4), "q_bm": choose(t.bwd_q_bm, min(64, cap_l)),
            "q_bn": choose(t.bwd_q_bn, min(64, cap_l)), "q_warps": choose(t.bwd_q_warps, 4), "stages": choose(t.bwd_stages, 2)}


def global_plan(B: int, G: int, N: int, D: int, dtype: torch.dtype, tuning: Tuning, sms: int) -> dict[str, Launch]:
    c = tiles(D, tuning, N)
    BD, prec, st = ef._pow2(D), ef._dot_prec(dtype), c["stages"]
    chunk, S = token_splits(N, c["red_bm"], B * G, sms, tuning.bwd_splits)
    mma = dict(WIDTH=D, BD=BD, DOT_PREC=prec)
    return {
        "g_partial": Launch("global_bwd_partial_kernel", dict(mma, CHUNK=chunk, BM=c["red_bm"]), c["red_warps"], st),
        "g_combine": Launch("global_bwd_combine_kernel", dict(S=S, BD=BD, CR=CR), 4, st),
        "g_tile": Launch("global_bwd_tile_kernel", dict(mma, BM=c["tile_bm"]), c["tile_warps"], st),
        "g_lepe": Launch("lepe_wgrad_combine_kernel", dict(WIDTH=D, B=B, S=S, BD=BD), 4, st),
    }


def local_plan(B: int, HL: int, N: int, L: int, D: int, dtype: torch.dtype, tuning: Tuning, sms: int
               ) -> dict[str, Launch]:
    c = tiles(D, tuning, N, L)
    BD, prec, st = ef._pow2(D), ef._dot_prec(dtype), c["stages"]
    chunk, S = token_splits(N, c["red_bm"], B * HL, sms, tuning.bwd_splits)
    mma = dict(WIDTH=D, BD=BD, DOT_PREC=prec, L=L)
    return {
        "l_pre": Launch("stripe_bwd_pre_kernel", dict(WIDTH=D, BD=BD, CHUNK=chunk, BM=c["red_bm"]), c["red_warps"], st),
        "l_dkdv": Launch("stripe_bwd_dkdv_kernel", dict(mma, BM=c["kv_bm"], BN=c["kv_bn"]), c["kv_warps"], st),
        "l_dq": Launch("stripe_bwd_dq_kernel", dict(mma, BM=c["q_bm"], BN=c["q_bn"]), c["q_warps"], st),
        "l_lepe": Launch("lepe_wgrad_combine_kernel", dict(WIDTH=D, B=B, S=S, BD=BD), 4, st),
    }


def case_plan(spec: ElfattSpec, batch: int, hw: tuple[int, int], dtype: torch.dtype, tuning: Tuning = Tuning(),
              sms: int = 132) -> dict[str, Launch]:
    """Every launch of one fused backward (for ahead-of-time compile checks)."""
    N = hw[0] * hw[1]
    plan = {}
    if spec.has_global():
        plan |= global_plan(batch, spec.global_count, N, spec.widths[0], dtype, tuning, sms)
    if spec.has_local():
        plan |= local_plan(batch, spec.local_count, N, spec.block_rows * hw[1], spec.widths[-1], dtype, tuning, sms)
    return plan


def _strides(*ts) -> list[int]:
    return [s for t in ts for s in (t.stride(0), t.stride(1), t.stride(2))]


def _lepe_grads(kb, launch: Launch, wws, w_taps, bias, G):
    """Merge the LePE records into (dw taps-first (9, G*D), dbias (G*D,)) in the weights' dtypes."""
    dw, db = ef.empty(w_taps.shape, w_taps), ef.empty(bias.shape, bias)
    _launch(kb, launch, (G,), wws, dw, db, dw.stride(0), G)
    return dw, db


def global_backward(kb, q, k, v, do, ctx, kstats, w_taps, bias, hw, dq, dk, dv, tuning, sms):
    """Global branch: q, k, v, do, dq, dk, dv are (B, G, N, D) views with channel
    stride 1 (every element of dq, dk, dv is written). Returns (dw_taps, dbias)."""
    B, G, N, D = q.shape
    p = global_plan(B, G, N, D, q.dtype, tuning, sms)
    BD, S = ef._pow2(D), p["g_combine"].consts["S"]
    ws = torch.empty(B * G * S, BD, BD, device=q.device, dtype=torch.float32)
    wws = torch.empty(B * G * S, NTAP, BD, device=q.device, dtype=torch.float32)
    _launch(kb, p["g_partial"], (S, B * G), q, v, do, ws, wws, *_strides(q, v, do), N, hw[1], G, S)
    dctx = torch.empty(B * G, BD, BD, device=q.device, dtype=torch.float32)
    col = torch.empty(B * G, BD, device=q.device, dtype=torch.float32)
    _launch(kb, p["g_combine"], (B * G, BD // CR), ws, ctx, dctx, col)
    _launch(kb, p["g_tile"], (math.ceil(N / p["g_tile"].consts["BM"]), B * G), q, k, v, do, ctx, kstats, dctx, col,
            w_taps, dq, dk, dv, *_strides(q, k, v, do, dq, dk, dv), w_taps.stride(0), N, hw[1], G)
    return _lepe_grads(kb, p["g_lepe"], wws, w_taps, bias, G)


def stripe_backward(kb, q, k, v, out, lse, do, w_taps, bias, hw, r, dq, dk, dv, tuning, sms):
    """Local branch: as ``global_backward``, with ``out`` the forward's output
    (attention + LePE) and ``lse`` its per-row statistics; stripes of r rows."""
    B, HL, N, D = q.shape
    H, W = hw
    L, stripes = r * W, H // r
    p = local_plan(B, HL, N, L, D, q.dtype, tuning, sms)
    S = p["l_lepe"].consts["S"]
    delta = torch.empty(B, HL, N, device=q.device, dtype=torch.float32)
    wws = torch.empty(B * HL * S, NTAP, ef._pow2(D), device=q.device, dtype=torch.float32)
    _launch(kb, p["l_pre"], (S, B * HL), out, do, v, w_taps, bias, delta, wws, *_strides(out, do, v),
            w_taps.stride(0), N, W, r, HL, S)
    scale = LOG2E / math.sqrt(D)
    n_kv = math.ceil(L / p["l_dkdv"].consts["BN"])
    _launch(kb, p["l_dkdv"], (stripes * n_kv, B * HL), q, k, v, do, lse, delta, w_taps, dk, dv,
            *_strides(q, k, v, do, dk, dv), w_taps.stride(0), N, W, r, HL, n_kv, scale)
    n_q = math.ceil(L / p["l_dq"].consts["BM"])
    _launch(kb, p["l_dq"], (stripes * n_q, B * HL), q, k, v, do, lse, delta, dq, *_strides(q, k, v, do, dq), N, HL,
            n_q, scale)
    return _lepe_grads(kb, p["l_lepe"], wws, w_taps, bias, HL)


def fused_backward(spec: ElfattSpec, lepe: LepeWeights, q, k, v, out, stats: dict, do, hw: tuple[int, int],
                   tuning: Tuning = Tuning()) -> Grads:
    """Gradients of the fast forward. q, k, v, out, do: (B, h, N, d) (out the
    forward's output view, do its gradient); ``stats`` as ``fast_forward(...,
    stats=)`` filled it."""
    q, k, v, out, do = (ef._unit_last(t) for t in (q, k, v, out, do))
    ef.check_launchable(spec, q, k, v)
    kb, sms = load_backward_kernels(), ef._sm_count(q.device)
    dq, dk, dv = (ef.empty(q.shape, q) for _ in range(3))
    views = [spec.split(t) for t in (q, k, v, out, do, dq, dk, dv)]
    (qg, ql), (kg, kl), (vg, vl), (og, ol), (dog, dol), (dqg, dql), (dkg, dkl), (dvg, dvl) = views
    dwg = dbg = dwl = dbl = None
    if spec.has_global():
        dwg, dbg = global_backward(kb, qg, kg, vg, dog, stats["ctx"], stats["kstats"], lepe.global_taps,
                                   lepe.global_bias, hw, dqg, dkg, dvg, tuning, sms)
    if spec.has_local():
        dwl, dbl = stripe_backward(kb, ql, kl, vl, ol, stats["lse"], dol, lepe.local_taps, lepe.local_bias, hw,
                                   spec.block_rows, dql, dkl, dvl, tuning, sms)
    return Grads(dq, dk, dv, dwg, dbg, dwl, dbl)
