"""The fused backward of ELFATT's fast path: launches of ``elfatt_triton_bwd``.

Module-free, like the forward: the layer is an ``ElfattSpec``, the LePE
weights come taps-first (``LepeWeights``) and the knobs are ``Tuning``'s
``bwd_*`` fields. What the forward keeps for it (``fast_forward(..., stats=)``)
is one ``saved`` buffer of per-row and per-channel statistics beside the
inputs and the output (``forward_plan.saved_layout``):

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

Launches (``Tuning.merge_launches``): the token reductions (global d_ctx
partials + stripe delta, both with LePE records) in one, the merges (d_ctx
and both LePE gradients) in one, then the gradient tiles (global dq/dk/dv,
stripe dk/dv, stripe dq) one launch each: 5 launches, or one per role (8)
with ``merge_launches=False``. ``bwd_merge_tiles`` also runs the three tile
roles in one launch (3 in all): on an H200 that was 12% slower at 3072 px
(the merged kernel's 189 registers hold the dq and global-tile roles to 2
programs per SM) and no faster at 1024 px. Roles of different warps never
share a launch. The plan is decided once per case; its scratch (partials,
records, delta) is a persistent per-stream workspace.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import NamedTuple

import torch

from . import elfatt_fast as ef
from . import forward_plan as fp
from .forward_plan import aligned, choose, pow2, token_splits
from .launch import Prepared, Ptr
from .spec import ElfattSpec, LepeWeights, Tuning

LOG2E = 1.4426950408889634
NTAP = 16  # rows of a LePE record (9 taps, the bias, padding): the kernels' NTAP
# call slots after the forward's ten (q, k, v, out, saved, workspace, LePE weights)
DO, DQ, DK, DV, DWG, DBG, DWL, DBL = range(10, 18)
SCRATCH = Ptr(DQ, 0, torch.float32)  # a pointer a launch never dereferences


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
    their nine LePE taps over 64-token tiles (32 at width 128). Measured on an
    H200 at 3072 px (ViT-B/16): 64-token tiles with 4 warps (179 registers, 2
    programs per SM) took 299 us, with 8 warps (136, 1 per SM) 577 us, 32-token
    tiles with 8 warps (3 per SM) 862 us. Width 128 keeps 8 warps there, and
    needs 8 in the global tile and dk-dv roles (4 spill)."""
    wide = pow2(D) > 64
    cap_n, cap_l = pow2(N), pow2(L or N)
    t = tuning
    return {"red_bm": choose(t.bwd_red_bm, min(32 if wide else 64, cap_n)),
            "red_warps": choose(t.bwd_red_warps, 8 if wide else 4),
            "tile_bm": choose(t.bwd_tile_bm, min(64, cap_n)), "tile_warps": choose(t.bwd_tile_warps, 8 if wide else 4),
            "kv_bm": choose(t.bwd_kv_bm, min(64, cap_l)), "kv_bn": choose(t.bwd_kv_bn, min(64, cap_l)),
            "kv_warps": choose(t.bwd_kv_warps, 8 if wide else 4), "q_bm": choose(t.bwd_q_bm, min(64, cap_l)),
            "q_bn": choose(t.bwd_q_bn, min(64, cap_l)), "q_warps": choose(t.bwd_q_warps, 4), "stages": choose(t.bwd_stages, 2)}


class Sizes(NamedTuple):
    """What every launch of one backward case shares."""

    case: fp.Case
    br: fp.Branches
    cg: dict  # tiles of the global branch
    cl: dict  # tiles of the local branch
    red_bm: int
    Sg: int
    chunk_g: int
    Sl: int
    chunk_l: int
    ws: dict  # workspace byte offsets, 'bytes': total
    saved: dict  # the forward's saved layout


def sizes(case: fp.Case) -> Sizes:
    """Tiles, splits (about 4 program slots per SM: their loops carry the nine LePE taps) and the workspace."""
    spec, t = case.spec, case.tuning
    br = fp.branches(spec, case.shape, case.strides)
    L = spec.block_rows * case.hw[1]
    cg, cl = tiles(br.dg, t, br.N), tiles(br.dl, t, br.N, L)
    red_bm = min(cg["red_bm"] if spec.has_global() else 1 << 30, cl["red_bm"] if spec.has_local() else 1 << 30)
    chunk_g, Sg = token_splits(br.N, red_bm, br.B * br.G, case.sms, t.bwd_splits, waves=4)
    chunk_l, Sl = token_splits(br.N, red_bm, br.B * br.HL, case.sms, t.bwd_splits, waves=4)
    BDg, BDl = pow2(br.dg), pow2(br.dl)
    parts = []
    if spec.has_global():
        parts += [("part", br.B * br.G * Sg * BDg * BDg), ("gwws", br.B * br.G * Sg * NTAP * BDg),
                  ("dctx", br.B * br.G * BDg * BDg), ("col", br.B * br.G * BDg)]
    if spec.has_local():
        parts += [("lwws", br.B * br.HL * Sl * NTAP * BDl), ("delta", br.B * br.HL * br.N)]
    ws, at = {}, 0
    for name, floats in parts:
        ws[name], at = at, aligned(at + 4 * floats)
    ws["bytes"] = at
    return Sizes(case, br, cg, cl, red_bm, Sg, chunk_g, Sl, chunk_l, ws, fp.saved_layout(br, case.dtype))


def _names(prefix: str, strides) -> dict:
    return {f"s_{prefix}{a}": s for a, s in zip("bhn", strides[:3])}


def _w(sz: Sizes, name: str) -> Ptr:
    return Ptr(fp.WS, sz.ws[name], torch.float32) if name in sz.ws else SCRATCH


def _saved(sz: Sizes, name: str, dtype: torch.dtype) -> Ptr:
    return Ptr(fp.SAVED, sz.saved[name][0], dtype) if name in sz.saved else SCRATCH


def _local(sz: Sizes, slot: int, index: int) -> Ptr:
    """The local branch of the tensor in ``slot`` (``index``: its place in the case's strides)."""
    return Ptr(slot, sz.br.qkv_local[index] * sz.case.dtype.itemsize, sz.case.dtype)


def _grad_local(sz: Sizes, slot: int) -> Ptr:
    B, h, N, d = sz.case.shape
    return Ptr(slot, sz.br.local(sz.case.spec, N * d) * sz.case.dtype.itemsize, sz.case.dtype)


def reduce_launches(sz: Sizes, kb, merge: bool) -> list[Prepared]:
    """The token reductions: global d_ctx partials and stripe delta, with their LePE records."""
    case, br, dt = sz.case, sz.br, sz.case.dtype
    sq, sk, sv, so, sd = case.strides
    has = {"g": case.spec.has_global(), "l": case.spec.has_local()}
    counts = {"g": sz.Sg * br.B * br.G if has["g"] else 0, "l": sz.Sl * br.B * br.HL if has["l"] else 0}
    vals = dict(gq_ptr=Ptr(fp.Q, 0, dt), gv_ptr=Ptr(fp.V, 0, dt), gdo_ptr=Ptr(DO, 0, dt), ws_ptr=_w(sz, "part"),
                gwws_ptr=_w(sz, "gwws"), lo_ptr=Ptr(fp.OUT, br.out_local * dt.itemsize, dt),
                ldo_ptr=_local(sz, DO, 4), lv_ptr=_local(sz, fp.V, 2), lw_ptr=Ptr(fp.WL, 0, case.wdtype),
                lb_ptr=Ptr(fp.BL, 0, case.wdtype), delta_ptr=_w(sz, "delta"), lwws_ptr=_w(sz, "lwws"),
                **_names("q", sq), **_names("v", sv), **_names("d", sd), **_names("o", so), l_s_wt=br.Cl,
                N=br.N, W=case.hw[1], R=case.spec.block_rows, G=br.G, HL=br.HL, S_G=sz.Sg, S_L=sz.Sl)
    consts = dict(BM=sz.red_bm, G_WIDTH=br.dg, G_BD=pow2(br.dg), G_CHUNK=sz.chunk_g, DOT_PREC=fp.dot_prec(dt),
                  L_WIDTH=br.dl, L_BD=pow2(br.dl), L_CHUNK=sz.chunk_l)
    warps, stages = sz.cg["red_warps"], sz.cg["stages"]
    groups = [[r for r in "gl" if has[r]]] if merge else [[r] for r in "gl" if has[r]]
    out = []
    for group in groups:
        on = {r: r in group for r in "gl"}
        v = dict(vals, P_G=counts["g"] if on["g"] else 0)
        c = dict(consts, HAS_G=on["g"], HAS_L=on["l"])
        roles = {n: counts[r] for r, n in (("g", "global_partial"), ("l", "stripe_pre")) if on[r]}
        out.append(Prepared(kb.bwd_reduce_kernel, "+".join(roles), (sum(roles.values()),), v, c, warps, stages,
                            roles))
    return out


def merge_shape(sz: Sizes) -> tuple[int, int, int]:
    """(CR, TR, CB): d_ctx rows per merge program (the most that still give one program per
    SM), and LePE tap rows and channels per program, the coarsest that give each LePE
    merge half an SM's worth of programs: its loop over batch x splits records is serial."""
    br, spec, sms = sz.br, sz.case.spec, sz.case.sms
    BDg, BDl = pow2(br.dg), pow2(br.dl)
    CR = fp.merge_rows(BDg, br.B * br.G, sms)
    bd = min(BDg if spec.has_global() else BDl, BDl if spec.has_local() else BDg)
    heads = min(br.G if spec.has_global() else br.HL, br.HL if spec.has_local() else br.G)
    for tr, cb in ((16, 64), (4, 32), (4, 16), (2, 16), (2, 8)):
        cb = min(cb, bd)
        if heads * -(-10 // tr) * (bd // cb) >= sms // 2:
            break
    return CR, tr, cb


def merge_launches(sz: Sizes, kb, merge: bool) -> list[Prepared]:
    """The merges, in fixed order: d_ctx (+ the dk column term), global and stripe LePE gradients."""
    case, br, dt, wdt = sz.case, sz.br, sz.case.dtype, sz.case.wdtype
    spec = case.spec
    CR, TR, CB = merge_shape(sz)
    BDg, BDl = pow2(br.dg), pow2(br.dl)
    cb = min(CB, BDg, BDl)
    counts = {"d": br.B * br.G * BDg // CR if spec.has_global() else 0,
              "gl": br.G * -(-10 // TR) * (BDg // cb) if spec.has_global() else 0,
              "ll": br.HL * -(-10 // TR) * (BDl // cb) if spec.has_local() else 0}
    vals = dict(ws_ptr=_w(sz, "part"), ctx_ptr=_saved(sz, "ctx", dt), dctx_ptr=_w(sz, "dctx"), col_ptr=_w(sz, "col"),
                gwws_ptr=_w(sz, "gwws"), gdw_ptr=Ptr(DWG, 0, wdt), gdb_ptr=Ptr(DBG, 0, wdt), lwws_ptr=_w(sz, "lwws"),
                ldw_ptr=Ptr(DWL, 0, wdt), ldb_ptr=Ptr(DBL, 0, wdt), G=br.G, HL=br.HL)
    consts = dict(B=br.B, CR=CR, TR=TR, CB=cb, G_WIDTH=br.dg, G_BD=BDg, S_G=sz.Sg, L_WIDTH=br.dl, L_BD=BDl, S_L=sz.Sl)
    names = {"d": "dctx_merge", "gl": "lepe_merge_global", "ll": "lepe_merge_local"}
    present = [r for r in ("d", "gl", "ll") if counts[r]]
    out = []
    for group in [present] if merge else [[r] for r in present]:
        roles = {names[r]: counts[r] for r in group}
        v = dict(vals, P_D=counts["d"] if "d" in group else 0, P_GL=counts["gl"] if "gl" in group else 0)
        c = dict(consts, HAS_G="d" in group or "gl" in group, HAS_L="ll" in group)
        out.append(Prepared(kb.bwd_merge_kernel, "+".join(roles), (sum(roles.values()),), v, c, 4, sz.cg["stages"],
                            roles))
    return out


def tile_launches(sz: Sizes, kb, merge: bool) -> list[Prepared]:
    """The gradient tiles: global dq/dk/dv, stripe dk/dv, stripe dq; merged where their warps agree."""
    case, br, dt = sz.case, sz.br, sz.case.dtype
    spec, (H, W) = case.spec, case.hw
    r, cg, cl = spec.block_rows, sz.cg, sz.cl
    L, stripes = r * W, H // r
    kv_tiles, q_tiles = math.ceil(L / cl["kv_bn"]), math.ceil(L / cl["q_bm"])
    counts = {"g": math.ceil(br.N / cg["tile_bm"]) * br.B * br.G if spec.has_global() else 0,
              "kv": stripes * kv_tiles * br.B * br.HL if spec.has_local() else 0,
              "q": stripes * q_tiles * br.B * br.HL if spec.has_local() else 0}
    warps = {"g": cg["tile_warps"], "kv": cl["kv_warps"], "q": cl["q_warps"]}
    sq, sk, sv, _, sd = case.strides
    B, h, N, d = case.shape
    sgrad = (h * N * d, N * d, d)
    vals = dict(gq_ptr=Ptr(fp.Q, 0, dt), gk_ptr=Ptr(fp.K, 0, dt), gv_ptr=Ptr(fp.V, 0, dt), gdo_ptr=Ptr(DO, 0, dt),
                ctx_ptr=_saved(sz, "ctx", dt), kst_ptr=_saved(sz, "kstats", torch.float32),
                dctx_ptr=_w(sz, "dctx"), col_ptr=_w(sz, "col"), gw_ptr=Ptr(fp.WG, 0, case.wdtype),
                gdq_ptr=Ptr(DQ, 0, dt), gdk_ptr=Ptr(DK, 0, dt), gdv_ptr=Ptr(DV, 0, dt),
                lq_ptr=_local(sz, fp.Q, 0), lk_ptr=_local(sz, fp.K, 1), lv_ptr=_local(sz, fp.V, 2),
                ldo_ptr=_local(sz, DO, 4), lse_ptr=_saved(sz, "lse", torch.float32), delta_ptr=_w(sz, "delta"),
                lw_ptr=Ptr(fp.WL, 0, case.wdtype), ldq_ptr=_grad_local(sz, DQ), ldk_ptr=_grad_local(sz, DK),
                ldv_ptr=_grad_local(sz, DV), **_names("q", sq), **_names("k", sk), **_names("v", sv),
                **_names("d", sd), **_names("gq", sgrad), **_names("gk", sgrad), **_names("gv", sgrad),
                g_s_wt=br.Cg, l_s_wt=br.Cl, N=br.N, W=W, R=r, G=br.G, HL=br.HL, KV_TILES=kv_tiles, Q_TILES=q_tiles,
                qk_scale=LOG2E / math.sqrt(br.dl))
    consts = dict(DOT_PREC=fp.dot_prec(dt), G_WIDTH=br.dg, G_BM=cg["tile_bm"], G_BD=pow2(br.dg), L_WIDTH=br.dl,
                  L=L, L_BD=pow2(br.dl), KV_BM=cl["kv_bm"], KV_BN=cl["kv_bn"], Q_BM=cl["q_bm"], Q_BN=cl["q_bn"])
    names = {"g": "global_tile", "kv": "stripe_dkdv", "q": "stripe_dq"}
    groups: list[list[str]] = []
    for role in (x for x in ("g", "kv", "q") if counts[x]):
        if merge and groups and warps[groups[-1][0]] == warps[role]:
            groups[-1].append(role)
        else:
            groups.append([role])
    out = []
    for group in groups:
        roles = {names[x]: counts[x] for x in group}
        v = dict(vals, P_G=counts["g"] if "g" in group else 0, P_KV=counts["kv"] if "kv" in group else 0)
        c = dict(consts, R_G="g" in group, R_KV="kv" in group, R_Q="q" in group)
        out.append(Prepared(kb.bwd_tiles_kernel, "+".join(roles), (sum(roles.values()),), v, c, warps[group[0]],
                            cg["stages"], roles))
    return out


def backward_launches(case: fp.Case, kb) -> tuple[list[Prepared], Sizes]:
    sz = sizes(case)
    merge = case.tuning.merge_launches
    tiles_merged = merge and case.tuning.bwd_merge_tiles
    return reduce_launches(sz, kb, merge) + merge_launches(sz, kb, merge) + tile_launches(sz, kb, tiles_merged), sz


class BackwardPlan:
    """One case's fused backward, decided once: launches, workspace, output shapes."""

    def __init__(self, case: fp.Case, kb, device: torch.device, copies: bool):
        launches, sz = backward_launches(case, kb)
        self.case, self.copies = case, copies
        self.info: dict[str, str] = {"bwd_launches": str(len(launches))}
        self.launcher = ef._launcher(launches, case.tuning, device, self.info)
        self.ws = ef.Workspaces(sz.ws["bytes"], device)
        br = sz.br
        self.lepe_shapes = ((br.Cg, 9), (br.Cg,), (br.Cl, 9), (br.Cl,))
        self.has = (case.spec.has_global(), case.spec.has_local())

    def run(self, lepe: LepeWeights, q, k, v, out, saved, do) -> Grads:
        if self.copies:
            q, k, v, out, do = (ef._unit_last(t) for t in (q, k, v, out, do))
        dq, dk, dv = (ef.empty(q.shape, q) for _ in range(3))
        g_shape, gb_shape, l_shape, lb_shape = self.lepe_shapes
        wg, wl = lepe.global_taps, lepe.local_taps
        dwg, dbg = (ef.empty(g_shape, wg), ef.empty(gb_shape, wg)) if self.has[0] else (None, None)
        dwl, dbl = (ef.empty(l_shape, wl), ef.empty(lb_shape, wl)) if self.has[1] else (None, None)
        stream = self.launcher.stream_of() if self.launcher.stream_of is not None else None
        self.launcher([q, k, v, out, saved, self.ws.get(stream), lepe.global_taps, lepe.global_bias,
                       lepe.local_taps, lepe.local_bias, do, dq, dk, dv, dwg, dbg, dwl, dbl])
        return Grads(dq, dk, dv, None if dwg is None else dwg.t(), dbg, None if dwl is None else dwl.t(), dbl)


PLANS: OrderedDict = OrderedDict()


def _build(spec, lepe, q, k, v, out, do, hw, tuning) -> BackwardPlan:
    strides = [t.stride() for t in (q, k, v, out, do)]
    copies = any(s[3] != 1 for s in strides)
    if copies:
        strides = [ef._unit_last(t).stride() for t in (q, k, v, out, do)]
    ef.check_launchable(spec, q.device, q.dtype, q.shape, strides[:3])
    w = lepe.global_taps if lepe.global_taps is not None else lepe.local_taps
    case = ef.case_of(spec, q.shape, strides, hw, q.dtype, w.dtype, tuning, True, ef._sm_count(q.device))
    return BackwardPlan(case, load_backward_kernels(), q.device, copies)


def fused_backward(spec: ElfattSpec, lepe: LepeWeights, q, k, v, out, stats: dict, do, hw: tuple[int, int],
                   tuning: Tuning = Tuning()) -> Grads:
    """Gradients of the fast forward. q, k, v, out, do: (B, h, N, d) (out the
    forward's output view, do its gradient); ``stats`` as ``fast_forward(...,
    stats=)`` filled it (its ``saved`` buffer)."""
    w = lepe.global_taps if lepe.global_taps is not None else lepe.local_taps
    key = (spec, tuning, q.shape, q.stride(), k.stride(), v.stride(), out.stride(), do.stride(), q.dtype, q.device,
           w.dtype, hw, ef.interpreting())
    plan = ef.cached(PLANS, key, lambda: _build(spec, lepe, q, k, v, out, do, hw, tuning))
    return plan.run(lepe, q, k, v, out, stats["saved"], do)


def case_plan(spec: ElfattSpec, batch: int, hw: tuple[int, int], dtype: torch.dtype, tuning: Tuning = Tuning(),
              sms: int = 132) -> list[Prepared]:
    """Every launch of one fused backward on the layer's layout, without tensors
    (q, k, v: views of one (B, N, 3, h, d) tensor; out and do: (B, N, h, d))."""
    h, d = spec.heads, spec.head_dim
    N = hw[0] * hw[1]
    strides = [(N * 3 * h * d, d, 3 * h * d, 1)] * 3 + [(N * h * d, d, h * d, 1)] * 2
    case = ef.case_of(spec, (batch, h, N, d), strides, hw, dtype, dtype, tuning, True, sms)
    return backward_launches(case, load_backward_kernels())[0]
