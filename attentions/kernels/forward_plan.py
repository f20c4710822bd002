"""The fast forward's launches for one case (layer, shapes, strides, dtypes,
tuning), decided once: ``build`` returns the ``Prepared`` launches, the
buffer sizes and what the run reports. ``elfatt_fast`` keeps one per case.

Launches (``Tuning.merge_launches``, the default), per the kernels module:
  1. ``global_context_kernel``: S token splits x B*G heads;
  2. ``stripe_attn_kernel``: the stripes, its last programs the combine of
     the S splits (``COMBINE``, when S > 1), or with no local heads
     ``global_combine_kernel`` alone;
  3. ``global_out_kernel``.
``merge_launches=False`` launches the combine on its own (4 launches); with
``local=sdpa`` SDPA and ``stripe_epilogue_kernel`` replace 2's stripes.

Buffers of a call: the output (B, N, h, d); with ``keep`` (the forward the
fused backward follows) one ``saved`` byte buffer holding ctx (B*G, BD, BD)
in the input dtype, K's statistics (B*G, BD) fp32 and the stripes' lse
(B, HL, N) fp32 (``saved_layout``); and a persistent workspace (the split
records; ctx when not kept), reused by every call on a stream.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from .launch import Prepared, Ptr
from .spec import ElfattSpec, Tuning

# call slots: the tensors of one call, in this order
Q, K, V, OUT, SAVED, WS, WG, BG, WL, BL = range(10)
NOWHERE = Ptr(OUT, 0, torch.float32)  # a pointer argument a launch never dereferences
ALIGN = 256  # byte alignment of every part of a buffer


def pow2(n: int, least: int = 16) -> int:
    """Next power of two >= n and >= ``least`` (tl.dot needs 16 in each dim)."""
    return max(least, 1 << max(0, n - 1).bit_length())


def choose(value, default):
    """A tuning knob's value, or the default when it is unset (None)."""
    return default if value is None else value


def dot_prec(dtype: torch.dtype) -> str:
    # fp32 inputs: exact fp32 products (tf32 would miss the 1e-5 target); fp16/bf16 ignore it.
    return "ieee" if dtype == torch.float32 else "tf32"


def token_splits(N: int, tile: int, programs: int, sms: int, splits: int | None = None,
                 waves: int = 2) -> tuple[int, int]:
    """(chunk, splits) of N tokens for a reduction over them: ``splits`` when
    set, else enough that programs x splits fill ``waves`` program slots per
    SM; never more than one per ``tile`` tokens, each chunk a multiple of ``tile``."""
    target = choose(splits, max(1, math.ceil(waves * sms / max(1, programs))))
    chunk = tile * math.ceil(math.ceil(N / max(1, target)) / tile)
    return chunk, math.ceil(N / chunk)


def merge_rows(BD: int, heads: int, sms: int) -> int:
    """Rows per program of a merge over heads x BD rows: the most (<= 8) that still give >= ``sms`` programs."""
    for cr in (8, 4):
        if heads * BD // cr >= sms:
            return cr
    return 2


def aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


@dataclass(frozen=True)
class Case:
    """What one plan is for (the plan cache's key holds the same facts)."""

    spec: ElfattSpec
    shape: tuple  # (B, h, N, d) of q, k, v
    strides: tuple  # q's, k's and v's (batch, head, token) element strides
    hw: tuple
    dtype: torch.dtype
    wdtype: torch.dtype  # the LePE weights'
    tuning: Tuning
    keep: bool  # also write what the fused backward needs (``saved``)
    sms: int


@dataclass(frozen=True)
class Branches:
    """Both branches' sizes, and the local branch's element offsets into each tensor of ``strides``
    (``qkv_local``: q, k, v, then any others) and into the output buffer (``out_local``)."""

    B: int
    N: int
    G: int
    HL: int
    dg: int
    dl: int
    qkv_local: tuple
    out_local: int
    Cg: int  # channels of each LePE (its taps' row stride)
    Cl: int

    def local(self, spec: ElfattSpec, head_stride: int) -> int:
        """The local branch's offset in a tensor with this head stride (and channel stride 1)."""
        return spec.global_channels if spec.global_heads is None else spec.global_heads * head_stride


def branches(spec: ElfattSpec, shape, strides) -> Branches:
    B, h, N, d = shape
    dg, dl = spec.widths[0], spec.widths[-1]
    br = Branches(B, N, spec.global_count, spec.local_count, dg, dl, (), 0, spec.global_count * dg,
                  spec.local_count * dl)
    return dataclasses.replace(br, qkv_local=tuple(br.local(spec, s[1]) for s in strides),
                               out_local=br.local(spec, d))


def saved_layout(br: Branches, dtype: torch.dtype) -> dict[str, tuple[int, tuple, torch.dtype]]:
    """name -> (byte offset, shape, dtype) of the parts of ``saved``, and ``bytes`` -> (total, (), None)."""
    BD = pow2(br.dg)
    parts, at = {}, 0
    for name, shape, dt in (("ctx", (br.B * br.G, BD, BD), dtype), ("kstats", (br.B * br.G, BD), torch.float32),
                            ("lse", (br.B, br.HL, br.N), torch.float32)):
        if shape[0] * shape[1]:
            parts[name] = (at, shape, dt)
            at = aligned(at + math.prod(shape) * dt.itemsize)
    parts["bytes"] = (at, (), None)
    return parts


def saved_views(saved: torch.Tensor, layout: dict) -> dict[str, torch.Tensor]:
    """Typed views of the parts of a ``saved`` buffer (for tests and inspection)."""
    return {name: saved[at: at + math.prod(shape) * dt.itemsize].view(dt).view(shape)
            for name, (at, shape, dt) in layout.items() if dt is not None}


def _strides(s) -> tuple:
    return s[0], s[1], s[2]


def global_consts(case: Case, br: Branches) -> tuple[dict, dict, int]:
    """(context kernel's constants, combine's constants or {}, splits)."""
    t, BD = case.tuning, pow2(br.dg)
    BN = choose(t.ctx_bn, min(64, pow2(br.N)))
    chunk, S = token_splits(br.N, BN, br.B * br.G, case.sms, t.global_splits, waves=2)
    ctx = dict(WIDTH=br.dg, CHUNK=chunk, BN=BN, BD=BD, SINGLE=S == 1, DOT_PREC=dot_prec(case.dtype),
               STORE_STATS=case.keep and S == 1)
    CR = merge_rows(BD, br.B * br.G, case.sms)
    SB = max(2, min(pow2(S, 1), 2048 // (CR * BD)))  # records per step of the combine: a 2048-float tile
    comb = dict(WIDTH=br.dg, S=S, BD=BD, CR=CR, SB=SB, STORE_STATS=case.keep) if S > 1 else {}
    return ctx, comb, S


def stripe_consts(case: Case, br: Branches) -> dict:
    """The stripe kernel's constants; BM 128 (8 warps) unless that leaves fewer than 2 programs per SM."""
    t, BD = case.tuning, pow2(br.dl)
    H, W = case.hw
    r = case.spec.block_rows
    L = r * W
    BM = t.stripe_bm
    if BM is None:
        BM = min(128 if BD <= 64 else 64, pow2(L))
        if BM > 64 and (H // r) * math.ceil(L / BM) * br.B * br.HL < 2 * case.sms:
            BM = 64
    return dict(WIDTH=br.dl, L=L, BM=BM, BN=choose(t.stripe_bn, min(64, pow2(L))), BD=BD,
                DOT_PREC=dot_prec(case.dtype), LEPE_UNROLL=choose(t.lepe_unroll, False), STORE_LSE=case.keep)


def buffers(case: Case, br: Branches, S: int) -> tuple[dict, dict]:
    """(saved layout, workspace layout {name: byte offset, 'bytes': total})."""
    saved = saved_layout(br, case.dtype) if case.keep else {"bytes": (0, (), None)}
    BD, ws, at = pow2(br.dg), {}, 0
    if case.spec.has_global() and S > 1:
        ws["records"], at = at, aligned(at + br.B * br.G * S * (BD * BD + 2 * BD) * 4)
    if case.spec.has_global() and not case.keep:
        ws["ctx"], at = at, aligned(at + br.B * br.G * BD * BD * case.dtype.itemsize)
    ws["bytes"] = at
    return saved, ws


def out_strides(br: Branches, shape) -> tuple:
    """The output buffer (B, N, h, d) seen as (B, h, N, d): (batch, head, token) strides."""
    B, h, N, d = shape
    return N * h * d, d, h * d


def global_launches(case: Case, br: Branches, kt, saved: dict, ws: dict) -> dict[str, Prepared]:
    """``ctx``, ``combine`` (with S > 1) and ``out`` of the global branch."""
    t, dt, wdt = case.tuning, case.dtype, case.wdtype
    ctx_c, comb_c, S = global_consts(case, br)
    sq, sk, sv = case.strides
    ctx = Ptr(SAVED, saved["ctx"][0], dt) if case.keep else Ptr(WS, ws["ctx"], dt)
    stats = Ptr(SAVED, saved["kstats"][0], torch.float32) if case.keep else NOWHERE
    rec = Ptr(WS, ws["records"], torch.float32) if S > 1 else NOWHERE
    heads = br.B * br.G
    kv = dict(zip(("s_kb", "s_kh", "s_kn", "s_vb", "s_vh", "s_vn"), (*_strides(sk), *_strides(sv))))
    plan = {"ctx": Prepared(kt.global_context_kernel, "global_context", (S, heads),
                            dict(k_ptr=Ptr(K, 0, dt), v_ptr=Ptr(V, 0, dt), ws_ptr=rec, ctx_ptr=ctx, N=br.N, G=br.G,
                                 S=S, stats_ptr=stats, **kv), ctx_c, t.ctx_warps, t.ctx_stages)}
    if S > 1:
        plan["combine"] = Prepared(kt.global_combine_kernel, "global_combine", (heads * comb_c["BD"] // comb_c["CR"],),
                                   dict(ws_ptr=rec, ctx_ptr=ctx, stats_ptr=stats), comb_c, 4, 3)
    BM = choose(t.out_bm, min(64, pow2(br.N)))
    out_c = dict(WIDTH=br.dg, BM=BM, BD=ctx_c["BD"], DOT_PREC=ctx_c["DOT_PREC"],
                 LEPE_UNROLL=choose(t.lepe_unroll, True))
    H, W = case.hw
    vals = dict(q_ptr=Ptr(Q, 0, dt), v_ptr=Ptr(V, 0, dt), ctx_ptr=ctx, w_ptr=Ptr(WG, 0, wdt), b_ptr=Ptr(BG, 0, wdt),
                o_ptr=Ptr(OUT, 0, dt), s_wt=br.Cg, N=br.N, H=H, W=W, G=br.G,
                **dict(zip(("s_qb", "s_qh", "s_qn", "s_vb", "s_vh", "s_vn", "s_ob", "s_oh", "s_on"),
                           (*_strides(sq), *_strides(sv), *out_strides(br, case.shape)))))
    plan["out"] = Prepared(kt.global_out_kernel, "global_out", (math.ceil(br.N / BM), heads), vals, out_c,
                           t.out_warps, 2)
    return plan


def _local_pointers(case: Case, br: Branches) -> dict:
    dt, isz = case.dtype, case.dtype.itemsize
    oq, ok, ov = br.qkv_local
    return dict(q_ptr=Ptr(Q, oq * isz, dt), k_ptr=Ptr(K, ok * isz, dt), v_ptr=Ptr(V, ov * isz, dt),
                w_ptr=Ptr(WL, 0, case.wdtype), b_ptr=Ptr(BL, 0, case.wdtype), o_ptr=Ptr(OUT, br.out_local * isz, dt))


def stripe_launch(case: Case, br: Branches, kt, saved: dict, combine: Prepared | None) -> Prepared:
    """The stripes, with ``combine``'s programs after them when given (COMBINE)."""
    c = stripe_consts(case, br)
    H, W = case.hw
    r = case.spec.block_rows
    tiles = math.ceil(c["L"] / c["BM"])
    stripes = (H // r) * tiles * br.B * br.HL
    sq, sk, sv = case.strides
    names = ("s_qb", "s_qh", "s_qn", "s_kb", "s_kh", "s_kn", "s_vb", "s_vh", "s_vn", "s_ob", "s_oh", "s_on")
    vals = dict(_local_pointers(case, br), s_wt=br.Cl, H=H, W=W, R=r, HL=br.HL, TILES=tiles,
                qk_scale=1.4426950408889634 / math.sqrt(br.dl),
                lse_ptr=Ptr(SAVED, saved["lse"][0], torch.float32) if case.keep else NOWHERE,
                **dict(zip(names, (*_strides(sq), *_strides(sk), *_strides(sv), *out_strides(br, case.shape)))))
    pre = combine.programs if combine is not None else 0
    if combine is None:
        vals.update(ws_ptr=NOWHERE, ctx_ptr=NOWHERE, stats_ptr=NOWHERE, STRIPES=stripes)
        c.update(COMBINE=False, C_WIDTH=1, C_S=1, C_BD=16, C_CR=2, C_SB=2, C_STATS=False)
    else:
        cv, cc = dict(zip(combine.kernel.arg_names, combine.args)), combine.consts
        vals.update(ws_ptr=cv["ws_ptr"], ctx_ptr=cv["ctx_ptr"], stats_ptr=cv["stats_ptr"], STRIPES=stripes)
        c.update(COMBINE=True, C_WIDTH=cc["WIDTH"], C_S=cc["S"], C_BD=cc["BD"], C_CR=cc["CR"], C_SB=cc["SB"],
                 C_STATS=cc["STORE_STATS"])
    warps = choose(case.tuning.stripe_warps, 4 if c["BM"] <= 64 else 8)
    roles = {"stripe_attn": stripes, "global_combine": pre} if pre else None
    return Prepared(kt.stripe_attn_kernel, "stripe_attn", (pre + stripes,), vals, c, warps,
                    case.tuning.stripe_stages, roles)


def epilogue_launch(case: Case, br: Branches, kt, a_strides: tuple, form: str, slot: int) -> Prepared:
    """The LePE epilogue after SDPA, whose output (call slot ``slot``) has ``a_strides`` in blocked ``form``."""
    H, W = case.hw
    r = case.spec.block_rows
    stripes = H // r
    if form == "A":  # row index head * stripes + stripe
        s_ab, s_as, s_ah = a_strides[0], a_strides[1], stripes * a_strides[1]
    else:  # row index batch * stripes + stripe
        s_ab, s_as, s_ah = stripes * a_strides[0], a_strides[0], a_strides[1]
    BD = pow2(br.dl)
    BM = choose(case.tuning.out_bm, min(64, pow2(r * W)))
    tiles = math.ceil(r * W / BM)
    p = _local_pointers(case, br)
    _, _, sv = case.strides
    vals = dict(a_ptr=Ptr(slot, 0, case.dtype), v_ptr=p["v_ptr"], w_ptr=p["w_ptr"], b_ptr=p["b_ptr"], o_ptr=p["o_ptr"],
                s_ab=s_ab, s_as=s_as, s_ah=s_ah, s_at=a_strides[2], s_wt=br.Cl, H=H, W=W, R=r, HL=br.HL, TILES=tiles,
                **dict(zip(("s_vb", "s_vh", "s_vn", "s_ob", "s_oh", "s_on"), (*_strides(sv),
                                                                            *out_strides(br, case.shape)))))
    consts = dict(WIDTH=br.dl, BM=BM, BD=BD, LEPE_UNROLL=choose(case.tuning.lepe_unroll, True))
    return Prepared(kt.stripe_epilogue_kernel, "stripe_epilogue", (stripes * tiles, br.B * br.HL), vals, consts, 4, 2)


def build(case: Case, kt) -> tuple[list[Prepared], dict, dict, dict[str, str]]:
    """(launches before SDPA or all of them, saved layout, workspace layout, info)."""
    br = branches(case.spec, case.shape, case.strides)
    _, _, S = global_consts(case, br) if case.spec.has_global() else (None, None, 1)
    saved, ws = buffers(case, br, S)
    info, launches = {}, []
    glob = global_launches(case, br, kt, saved, ws) if case.spec.has_global() else {}
    combine = glob.get("combine")
    merge = case.tuning.merge_launches and case.tuning.local == "triton" and case.spec.has_local()
    launches += [glob["ctx"]] if glob else []
    launches += [combine] if combine is not None and not merge else []
    if case.spec.has_local() and case.tuning.local == "triton":
        launches.append(stripe_launch(case, br, kt, saved, combine if merge else None))
        c = launches[-1].consts
        info["local"] = f"triton BM={c['BM']} BN={c['BN']}"
    launches += [glob["out"]] if glob else []
    if glob:
        cc = glob["ctx"].consts
        info["global"] = f"splits={S} chunk={cc['CHUNK']} BN={cc['BN']} BM={glob['out'].consts['BM']}"
    # Triton launches per call (with local=sdpa: SDPA's own kernels, then the LePE epilogue)
    info["launches"] = str(len(launches) + (1 if case.spec.has_local() and case.tuning.local == "sdpa" else 0))
    return launches, saved, ws, info
