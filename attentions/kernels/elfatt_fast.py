"""ELFATT's fast path: the reference function (``attentions/elfatt.py``) as a
few fused Triton launches writing one output buffer.

It knows nothing of the module: the caller describes the layer with an
``ElfattSpec`` (how heads split into branches, widths, block rows), hands the
LePE weights as tensors (``LepeWeights``) and the declared ``Tuning``.

Global heads (3 launches, 2 when one split covers all tokens):
  1. ``global_context_kernel``: per (batch, head, token split) the column
     softmax statistics of K (max, sum of exp) fused with the d x d context
     k_hat^T V, one pass over K and V;
  2. ``global_combine_kernel``: merges the splits in a fixed order
     (deterministic, no atomics) into ctx (B*g, d, d);
  3. ``global_out_kernel``: channel softmax of Q, Q_hat @ ctx, + global LePE,
     stored at the global heads' channels of the output.
Local heads (1 launch): ``stripe_attn_kernel``, flash-style softmax attention
inside each stripe + the stripe LePE, stored at the local heads' channels.
Alternative local path (``Tuning(local="sdpa")``): torch SDPA on an
uncopied stripe-blocked view, then ``stripe_epilogue_kernel`` adds the LePE.

The output is one (B, N, heads*d) buffer returned as the (B, h, N, d) view,
so the layer's merge of heads before ``proj`` is free. Inputs are used
through their strides (the layer passes permuted views of the qkv output).

Autograd lives with the module (``attentions/elfatt.py``); this module is
forward only.
"""
from __future__ import annotations

import functools
import importlib
import math
import os
import sys
from dataclasses import dataclass

import torch

from ..errors import Unavailable, Unsupported
from ..functional import sdpa
from .spec import ElfattSpec, LepeWeights, Tuning

FAST_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_WIDTH = 128  # registers: a (BM, 128) fp32 accumulator is the most a program holds
#: Tests set this to fill the output with NaN before the kernels run, so an
#: element no kernel writes cannot pass by holding a stale right value.
POISON = False


def interpreting() -> bool:
    """Whether Triton kernels run in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def fast_reasons(*, device: torch.device, dtype: torch.dtype, widths: tuple[int, ...]) -> list[str]:
    """Why the fast path cannot run this case (empty when it can). A missing
    triton is not listed: that raises ``Unavailable`` when the path runs."""
    return list(_reasons(torch.device(device).type, dtype, tuple(widths), interpreting()))


@functools.lru_cache(maxsize=None)  # asked on every call: keep it off the launch path
def _reasons(dev: str, dtype: torch.dtype, widths: tuple[int, ...], interp: bool) -> tuple[str, ...]:
    reasons = []
    if dev == "cpu" and not interp:
        reasons.append("impl=fast runs Triton kernels on CUDA; the device is cpu "
                       "(TRITON_INTERPRET=1 runs them, slowly, in Triton's CPU interpreter)")
    elif dev not in ("cpu", "cuda"):
        reasons.append(f"impl=fast runs Triton kernels on CUDA, not on {dev}")
    if dtype not in FAST_DTYPES:
        reasons.append(f"impl=fast runs float16, bfloat16 and float32, not {dtype}")
    elif dtype == torch.bfloat16 and interp:
        # numpy has no bfloat16: the interpreter's tl.dot multiplies the raw 16-bit patterns
        reasons.append("Triton 3.6's CPU interpreter computes bfloat16 tl.dot wrongly (numpy has no bfloat16)")
    if max(widths, default=0) > MAX_WIDTH:
        reasons.append(f"impl=fast handles branch widths up to {MAX_WIDTH} channels, not {max(widths)}")
    return tuple(reasons)


def triton_missing() -> str:
    """Why triton cannot be imported ('' when it is there); looks, imports nothing."""
    import importlib.util

    if sys.modules.get("triton") is not None:
        return ""
    try:
        return "" if importlib.util.find_spec("triton") is not None else "triton is not installed"
    except (ImportError, ValueError) as e:  # a broken or shadowed package
        return f"triton cannot be found: {e}"


def _load(module_name: str):
    """The Triton kernels module ``module_name`` of this package, compiled or
    interpreted as the environment says now. ``@triton.jit`` fixes that choice
    when the module is imported, so it is reloaded when TRITON_INTERPRET
    changed since (tests flip it)."""
    km = sys.modules.get(f"{__package__}.{module_name}")
    if km is not None and km.INTERPRETED == interpreting():
        return km  # the common case, without the import machinery
    try:
        km = importlib.import_module(f".{module_name}", __package__)
    except Exception as e:  # ImportError, or a triton that fails while importing
        raise Unavailable(f"impl=fast needs triton, which cannot be imported here: {type(e).__name__}: {e}") from None
    if km.INTERPRETED != interpreting():
        km = importlib.reload(km)
    return km


def load_kernels():
    """The forward's Triton kernels (``elfatt_triton``), as ``_load`` says."""
    return _load("elfatt_triton")


def _pow2(n: int, least: int = 16) -> int:
    """Next power of two >= n and >= ``least`` (tl.dot needs 16 in each dim)."""
    return max(least, 1 << max(0, n - 1).bit_length())


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    # The kernels assume channel stride 1; every layout this project makes has it.
    return t if t.stride(-1) == 1 else t.contiguous()


def _usage(info: dict, name: str, kernel) -> None:
    """Record a compiled kernel's registers and spills (the interpreter returns none)."""
    if hasattr(kernel, "n_regs"):
        info[f"{name}_regs_spills"] = f"{kernel.n_regs}/{kernel.n_spills}"


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 2  # interpreter: a couple of splits, so tests exercise the combine kernel


def _dot_prec(dtype: torch.dtype) -> str:
    # fp32 inputs: exact fp32 products (tf32 would miss the 1e-5 target); fp16/bf16 ignore it.
    return "ieee" if dtype == torch.float32 else "tf32"


def taps_first(conv: torch.nn.Conv2d) -> torch.Tensor:
    """The LePE weights as (9, channels), contiguous, so a kernel loads each
    tap's weights as vectors. Cached on the conv, keyed by the weight's
    storage and version counter (an optimizer step bumps it)."""
    w = conv.weight
    key = (w.data_ptr(), w._version, w.dtype, w.device)
    cached = getattr(conv, "_elfatt_taps_first", None)
    if cached is None or cached[0] != key:
        cached = (key, w.detach().reshape(w.shape[0], 9).t().contiguous())
        conv._elfatt_taps_first = cached
    return cached[1]


def choose(value, default):
    """A tuning knob's value, or the default when it is unset (None)."""
    return default if value is None else value


def token_splits(N: int, tile: int, programs: int, sms: int, splits: int | None = None) -> tuple[int, int]:
    """(chunk, splits) of N tokens for a reduction over them: ``splits`` when
    set, else about one program per SM over ``programs`` (batch x head)
    pairs; never more than one per ``tile`` tokens, each chunk a multiple of ``tile``."""
    target = choose(splits, max(1, math.ceil(sms / programs)))
    chunk = tile * math.ceil(math.ceil(N / max(1, target)) / tile)
    return chunk, math.ceil(N / chunk)


@dataclass(frozen=True)
class Launch:
    """One kernel launch of a case: the kernel's name, its compile-time
    constants, warps and pipeline stages (what one compiled binary is)."""

    kernel: str
    consts: dict
    num_warps: int
    num_stages: int


def global_plan(B: int, G: int, N: int, D: int, dtype: torch.dtype, tuning: Tuning, sms: int,
                stats: bool = False) -> dict[str, Launch]:
    """The global branch's launches (``ctx``, ``combine`` when split, ``out``) for G heads of width D;
    ``stats``: also store K's per-channel log-sum-exp (for the fused backward)."""
    BD = _pow2(D)
    BN = choose(tuning.ctx_bn, min(64, _pow2(N)))
    # each split streams its chunk with several tiles in flight
    chunk, S = token_splits(N, BN, B * G, sms, tuning.global_splits)
    prec = _dot_prec(dtype)
    plan = {"ctx": Launch("global_context_kernel", dict(WIDTH=D, CHUNK=chunk, BN=BN, BD=BD, SINGLE=S == 1,
                                                        DOT_PREC=prec, STORE_STATS=stats and S == 1),
                          tuning.ctx_warps, tuning.ctx_stages)}
    if S > 1:  # CR = 8 ctx rows per combine program: BD/8 programs per head share the merge
        plan["combine"] = Launch("global_combine_kernel", dict(WIDTH=D, S=S, BD=BD, CR=8, STORE_STATS=stats), 4, 3)
    BM = choose(tuning.out_bm, min(64, _pow2(N)))
    plan["out"] = Launch("global_out_kernel", dict(WIDTH=D, BM=BM, BD=BD, DOT_PREC=prec,
                                                   LEPE_UNROLL=choose(tuning.lepe_unroll, True)), tuning.out_warps, 2)
    return plan


def local_plan(L: int, D: int, dtype: torch.dtype, tuning: Tuning, lse: bool = False) -> dict[str, Launch]:
    """The local branch's launch for stripes of L tokens and width D: the fused
    stripe kernel, or (``local=sdpa``) the LePE epilogue after SDPA. ``lse``:
    the stripe kernel also stores each row's log-sum-exp (for the fused
    backward, which therefore needs ``local=triton``: ``Tuning.fused_backward``)."""
    BD = _pow2(D)
    if lse and tuning.local != "triton":
        raise ValueError(f"the stripes' log-sum-exp (for the fused backward) comes from the Triton stripe kernel "
                         f"only; tuning.local={tuning.local!r} keeps none")
    if tuning.local == "triton":
        BM = choose(tuning.stripe_bm, min(128 if BD <= 64 else 64, _pow2(L)))
        BN = choose(tuning.stripe_bn, min(64, _pow2(L)))
        consts = dict(WIDTH=D, L=L, BM=BM, BN=BN, BD=BD, DOT_PREC=_dot_prec(dtype),
                      LEPE_UNROLL=choose(tuning.lepe_unroll, False),  # the loop keeps 125 registers at BM=128 (sm_90)
                      STORE_LSE=lse)
        warps = choose(tuning.stripe_warps, 4 if BM <= 64 else 8)
        return {"stripe": Launch("stripe_attn_kernel", consts, warps, tuning.stripe_stages)}
    BM = choose(tuning.out_bm, min(64, _pow2(L)))
    return {"epilogue": Launch("stripe_epilogue_kernel", dict(WIDTH=D, BM=BM, BD=BD,
                                                              LEPE_UNROLL=choose(tuning.lepe_unroll, True)), 4, 2)}


def case_plan(spec: ElfattSpec, batch: int, hw: tuple[int, int], dtype: torch.dtype, tuning: Tuning = Tuning(),
              sms: int = 132, stats: bool = False) -> dict[str, Launch]:
    """Every launch of one fast forward (for ahead-of-time compile checks);
    ``stats``: the forward that keeps what the fused backward needs."""
    N = hw[0] * hw[1]
    plan = {}
    if spec.has_global():
        plan |= global_plan(batch, spec.global_count, N, spec.widths[0], dtype, tuning, sms, stats)
    if spec.has_local():
        plan |= local_plan(spec.block_rows * hw[1], spec.widths[-1], dtype, tuning, stats)
    return plan


def _launch(kt, launch: Launch, grid, *args, info=None, name="", **pointers):
    """Launch ``launch`` on ``grid``: positional arguments, then named ones (pointers that
    follow the constexprs in the signature), then the plan's constants."""
    compiled = getattr(kt, launch.kernel)[grid](*args, **pointers, **launch.consts, num_warps=launch.num_warps,
                                                num_stages=launch.num_stages)
    if info is not None:
        _usage(info, name, compiled)


def _global_branch(kt, q, k, v, w, bias, o, hw, tuning: Tuning, info, kstats=None) -> torch.Tensor:
    """Global heads: q, k, v, o are (B, G, N, D) views; w (9, G*D), bias (G*D,).
    Returns ctx (B*G, BD, BD); ``kstats`` (B*G, BD) fp32, when given, receives
    K's per-channel base-2 log-sum-exp."""
    B, G, N, D = q.shape
    H, W = hw
    plan = global_plan(B, G, N, D, q.dtype, tuning, _sm_count(q.device), stats=kstats is not None)
    ctx_c, BD = plan["ctx"].consts, _pow2(D)
    S = plan["combine"].consts["S"] if "combine" in plan else 1
    ctx = torch.empty(B * G, BD, BD, device=q.device, dtype=q.dtype)
    ws = torch.empty(B * G * S * (BD * BD + 2 * BD), device=q.device, dtype=torch.float32) if S > 1 else ctx
    stats = ctx if kstats is None else kstats  # a placeholder pointer when not stored
    _launch(kt, plan["ctx"], (S, B * G), k, v, ws, ctx, k.stride(0), k.stride(1), k.stride(2), v.stride(0),
            v.stride(1), v.stride(2), N, G, S, info=info, name="ctx", stats_ptr=stats)
    if S > 1:
        _launch(kt, plan["combine"], (B * G, BD // plan["combine"].consts["CR"]), ws, ctx, stats_ptr=stats)
    BM = plan["out"].consts["BM"]
    _launch(kt, plan["out"], (math.ceil(N / BM), B * G), q, v, ctx, w, bias, o, q.stride(0), q.stride(1),
            q.stride(2), v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2), w.stride(0),
            N, H, W, G, info=info, name="out")
    info["global"] = f"splits={S} chunk={ctx_c['CHUNK']} BN={ctx_c['BN']} BM={BM}"
    return ctx


def _stripe_blocks(t: torch.Tensor, stripes: int):
    """(B, h, N, D) -> (a 4-D stripe-blocked tensor for SDPA, its form), uncopied
    when the strides allow: form A (B, h*b, L, D), form B (B*b, h, L, D). The
    form says how to address SDPA's result by (batch, stripe, head)."""
    B, h, N, D = t.shape
    L = N // stripes
    try:
        return t.view(B, h * stripes, L, D), "A"
    except RuntimeError:
        pass
    try:  # the layer's layout: batch stride = N * token stride
        return t.view(B, h, stripes, L, D).transpose(1, 2).view(B * stripes, h, L, D), "B"
    except RuntimeError:
        return t.reshape(B, h * stripes, L, D), "A"  # a copy; no layout here needs it


def _local_branch(kt, q, k, v, w, bias, o, hw, r, tuning: Tuning, info, lse=None):
    """Local heads: softmax attention inside stripes of r rows + stripe LePE.
    ``lse`` (B, HL, N) fp32, when given, receives each row's base-2 log-sum-exp."""
    B, HL, N, D = q.shape
    H, W = hw
    L, stripes = r * W, H // r
    plan = local_plan(L, D, q.dtype, tuning, lse=lse is not None)
    if "stripe" in plan:
        c = plan["stripe"].consts
        tiles = math.ceil(L / c["BM"])
        _launch(kt, plan["stripe"], (stripes * tiles, B * HL), q, k, v, w, bias, o, q.stride(0), q.stride(1),
                q.stride(2), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
                o.stride(0), o.stride(1), o.stride(2), w.stride(0), H, W, r, HL, tiles,
                1.4426950408889634 / math.sqrt(D), info=info, name="stripe", lse_ptr=o if lse is None else lse)
        info["local"] = f"triton BM={c['BM']} BN={c['BN']}"
        return
    (qb, form), (kb, _), (vb, _) = (_stripe_blocks(t, stripes) for t in (q, k, v))
    a = _unit_last(sdpa(qb, kb, vb, tuning.sdpa_impl))
    if form == "A":  # row index head * stripes + stripe
        s_ab, s_as, s_ah = a.stride(0), a.stride(1), stripes * a.stride(1)
    else:  # row index batch * stripes + stripe
        s_ab, s_as, s_ah = stripes * a.stride(0), a.stride(0), a.stride(1)
    tiles = math.ceil(L / plan["epilogue"].consts["BM"])
    _launch(kt, plan["epilogue"], (stripes * tiles, B * HL), a, v, w, bias, o, s_ab, s_as, s_ah, a.stride(2),
            v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2), w.stride(0),
            H, W, r, HL, tiles)
    info["local"] = f"sdpa ({form} view) + triton LePE"


def check_launchable(spec: ElfattSpec, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Unsupported when the kernels cannot take this case (device, dtype, sizes)."""
    B, h, N, d = q.shape
    reasons = fast_reasons(device=q.device, dtype=q.dtype, widths=spec.widths)
    if reasons:
        raise Unsupported("; ".join(reasons))
    if B * h > 65535:
        raise Unsupported(f"impl=fast launches batch*heads={B * h} programs on one grid axis (limit 65535)")
    if N * max(t.stride(2) for t in (q, k, v)) >= 2**31 or N * h * d >= 2**31:
        raise Unsupported(f"impl=fast indexes tokens in int32; N={N} tokens with these strides overflow it")


def empty(shape, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An output buffer; NaN-filled under POISON, so an element no kernel writes shows."""
    if POISON:
        return torch.full(shape, float("nan"), device=like.device, dtype=dtype or like.dtype)
    return torch.empty(shape, device=like.device, dtype=dtype or like.dtype)


def fast_forward(spec: ElfattSpec, lepe: LepeWeights, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 hw: tuple[int, int], tuning: Tuning = Tuning(), stats: dict | None = None
                 ) -> tuple[torch.Tensor, dict[str, str]]:
    """The fast forward (no autograd): the (B, N, h, d) output buffer and what ran (tiles, registers).
    ``stats`` (a dict): also keep what the fused backward needs in it (``ctx``,
    ``kstats``, ``lse``); local heads then need ``tuning.local=triton``
    (``Tuning.fused_backward``)."""
    check_launchable(spec, q, k, v)
    kt = load_kernels()
    B, h, N, d = q.shape
    buf = empty((B, N, h, d), q)
    out = buf.permute(0, 2, 1, 3)  # (B, h, N, d) view of the (B, N, C) buffer
    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    (qg, ql), (kg, kl), (vg, vl), (og, ol) = (spec.split(t) for t in (q, k, v, out))
    info: dict[str, str] = {}
    keep = stats is not None
    if spec.has_global():
        kstats = torch.empty(B * qg.shape[1], _pow2(qg.shape[-1]), device=q.device, dtype=torch.float32) if keep else None
        ctx = _global_branch(kt, qg, kg, vg, lepe.global_taps, lepe.global_bias, og, hw, tuning, info, kstats)
        if keep:
            stats.update(ctx=ctx, kstats=kstats)
    if spec.has_local():
        lse = torch.empty(B, ql.shape[1], N, device=q.device, dtype=torch.float32) if keep else None
        _local_branch(kt, ql, kl, vl, lepe.local_taps, lepe.local_bias, ol, hw, spec.block_rows, tuning, info, lse)
        if keep:
            stats["lse"] = lse
    return buf, info
