"""Triton kernels of the fast ELFATT path (composed in ``elfatt_fast.py``).

Imported lazily, only when the fast path runs: importing it imports triton,
and ``@triton.jit`` decides *at decoration time* whether a kernel compiles for
the GPU or runs in Triton's CPU interpreter (``TRITON_INTERPRET=1``).
``INTERPRETED`` records which, so the composition can reload this module
when the environment changed since it was first imported (tests do that).

Layout conventions shared by every kernel:
- q, k, v, out are addressed as (B, heads, N, width) with element strides
  (batch, head, token) and channel stride 1 (batch offsets in int64, token
  offsets in int32: the composition checks N * token stride < 2**31); they are the branch's slices of
  the caller's tensors (the layer passes permuted views of the qkv output,
  token stride 3C), so no kernel needs a copy.
- ``BD`` is the branch width padded to a power of two >= 16 (tl.dot's least
  size); padded channels are masked on load and never stored.
- Exponentials are taken base 2 on log2(e)-scaled logits (one multiply
  folded into the scale, exp2 is the native instruction).
- Only triton builtins, no triton library @jit functions (see imports).
- WIDTH is constexpr: with a run-time width the channel mask has no known
  constancy and every load and store falls apart into 2-byte accesses.
- Loop trip counts are constexpr (CHUNK, S, L): Triton 3.6's interpreter
  cannot ``range()`` to a run-time value under numpy >= 2.4 (it calls int()
  on a 1-element array), and on the GPU a known trip count costs only one
  compile per grid shape.
- LePE weights come taps-first, (9, channels) contiguous (``s_wt`` =
  channels), biases (channels,).
- A LePE (depthwise 3x3, zero padding) is fused into every kernel that
  writes the output: its 9 taps re-read v around the tile, which the
  attention loop has just brought into L2, so the output is written once.
"""
from __future__ import annotations

import triton
import triton.language as tl
# The reductions name their combine functions instead of calling tl.max /
# tl.sum / tl.zeros: those are @jit functions of triton's own library, fixed
# compiled-or-interpreted when triton was first imported (torch may import it
# before a test sets TRITON_INTERPRET). tl.reduce with these exact combiners
# is what tl.max / tl.sum do when compiled, and the interpreter recognises
# them and reduces with numpy.
from triton.language.standard import _elementwise_max, _sum_combine

INTERPRETED = bool(triton.knobs.runtime.interpret)
# A module-level constant a kernel reads must be a constexpr.
LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _lepe_tap(out, v_base, s_vn, w_base, s_wt, offs_n, offs_c, c_mask, row_ok, col, W, ky, kx):
    c2 = col + (kx - 1)
    ok = row_ok & (c2 >= 0) & (c2 < W)
    nb = offs_n + ((ky - 1) * W + (kx - 1))
    vv = tl.load(v_base + nb[:, None] * s_vn + offs_c[None, :], mask=ok[:, None] & c_mask[None, :], other=0.0)
    wt = tl.load(w_base + (ky * 3 + kx) * s_wt + offs_c, mask=c_mask, other=0.0)
    return out + vv.to(tl.float32) * wt.to(tl.float32)[None, :]


@triton.jit
def _lepe(v_base, s_vn, w_base, s_wt, b_base, offs_n, offs_c, c_mask, n_mask, H, W, R, UNROLL: tl.constexpr):
    """Depthwise 3x3 conv of v at tokens ``offs_n`` + bias, (BM, BD) fp32.

    The map is cut into bands of ``R`` whole rows with zero padding at each
    band's top and bottom: R = H is the plain conv (global LePE), R =
    block_rows the per-stripe conv (local LePE). Weights are taps-first:
    w_base[tap * s_wt + c] (contiguous in c, so they load as vectors).
    Summed apart from the attention accumulator and added once by the
    caller, in the loads' own layout: no tile is converted to the MMA layout.
    UNROLL: the 3 taps of a row unrolled (3 loads in flight, ~60 more
    registers: 186 vs 126 at BM=128, sm_90) or all 9 in a loop; all 9
    unrolled hoists 9 tiles and spills.
    """
    row = offs_n // W
    col = offs_n % W
    lo = (row // R) * R
    bias = tl.load(b_base + offs_c, mask=c_mask, other=0.0)
    out = tl.full([offs_n.shape[0], offs_c.shape[0]], 0.0, tl.float32) + bias.to(tl.float32)[None, :]
    for ky in range(3):
        r2 = row + (ky - 1)
        row_ok = n_mask & (r2 >= lo) & (r2 < lo + R)
        if UNROLL:
            for kx in tl.static_range(3):
                out = _lepe_tap(out, v_base, s_vn, w_base, s_wt, offs_n, offs_c, c_mask, row_ok, col, W, ky, kx)
        else:
            for kx in range(3):
                out = _lepe_tap(out, v_base, s_vn, w_base, s_wt, offs_n, offs_c, c_mask, row_ok, col, W, ky, kx)
    return out


@triton.jit
def global_context_kernel(
    k_ptr, v_ptr, ws_ptr, ctx_ptr,
    s_kb, s_kh, s_kn, s_vb, s_vh, s_vn,
    N, G, S,
    WIDTH: tl.constexpr, CHUNK: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, SINGLE: tl.constexpr, DOT_PREC: tl.constexpr,
    stats_ptr, STORE_STATS: tl.constexpr,
):
    """Column softmax of K over tokens fused with the d x d context k_hat^T V.

    Program (split s, batch*head): one pass over its CHUNK tokens keeps, per
    channel c, the running max m[c], the running sum l[c] of exp(k - m) and
    acc[c, :] = sum_n exp(k[n, c] - m[c]) v[n, :] (rescaled when m grows),
    exactly as flash attention does along the other axis. SINGLE (one split):
    write ctx = acc / l straight away; otherwise write (m, l, acc) in fp32 to
    the workspace for ``global_combine_kernel`` (deterministic, no atomics).
    STORE_STATS (for the backward, with SINGLE): also write each channel's
    log-sum-exp in base 2, m + log2(l), to ``stats_ptr`` (B*G, BD) fp32, so
    that k_hat[n, c] = exp2(k[n, c] * log2(e) - stats[c]).
    """
    pid_s = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // G).to(tl.int64)
    hh = (pid_bh % G).to(tl.int64)
    k_base = k_ptr + b * s_kb + hh * s_kh
    v_base = v_ptr + b * s_vb + hh * s_vh
    offs_c = tl.arange(0, BD)
    c_mask = offs_c < WIDTH
    m = tl.full([BD], float("-inf"), tl.float32)
    l = tl.full([BD], 0.0, tl.float32)
    acc = tl.full([BD, BD], 0.0, tl.float32)
    start = pid_s * CHUNK
    end = tl.minimum(start + CHUNK, N)
    for n0 in range(0, CHUNK, BN):  # the last split's tiles past N are fully masked: p = 0, alpha = 1
        offs_n = start + n0 + tl.arange(0, BN)
        n_mask = offs_n < end
        kt = tl.load(k_base + offs_n[:, None] * s_kn + offs_c[None, :], mask=n_mask[:, None] & c_mask[None, :], other=0.0)
        vt = tl.load(v_base + offs_n[:, None] * s_vn + offs_c[None, :], mask=n_mask[:, None] & c_mask[None, :], other=0.0)
        # Padded channels read 0 (finite): their m stays finite, no NaN; rows past the chunk are -inf.
        kf = tl.where(n_mask[:, None], kt.to(tl.float32) * LOG2E, float("-inf"))
        m_new = tl.maximum(m, tl.reduce(kf, 0, _elementwise_max))
        alpha = tl.exp2(m - m_new)  # first tile: exp2(-inf) = 0; every chunk has a valid first row
        p = tl.exp2(kf - m_new[None, :])  # (BN, BD)
        l = l * alpha + tl.reduce(p, 0, _sum_combine)
        acc = acc * alpha[:, None] + tl.dot(tl.trans(p.to(vt.dtype)), vt, input_precision=DOT_PREC)
        m = m_new
    offs_cc = offs_c[:, None] * BD + offs_c[None, :]
    if SINGLE:
        ctx = tl.where(c_mask[:, None] & c_mask[None, :], acc / l[:, None], 0.0)
        tl.store(ctx_ptr + pid_bh.to(tl.int64) * BD * BD + offs_cc, ctx.to(ctx_ptr.dtype.element_ty))
        if STORE_STATS:
            tl.store(stats_ptr + pid_bh.to(tl.int64) * BD + offs_c, m + tl.log2(l))
    else:
        rec = ws_ptr + (pid_bh.to(tl.int64) * S + pid_s) * (BD * BD + 2 * BD)
        tl.store(rec + offs_c, m)
        tl.store(rec + BD + offs_c, l)
        tl.store(rec + 2 * BD + offs_cc, acc)


@triton.jit
def _combine_rows(ws_ptr, ctx_ptr, stats_ptr, pid, WIDTH: tl.constexpr, S: tl.constexpr, BD: tl.constexpr,
                  CR: tl.constexpr, SB: tl.constexpr, STORE_STATS: tl.constexpr):
    """Program ``pid`` of a combine: rows (pid % (BD/CR)) * CR.. of head pid // (BD/CR).
    Merges the S split records of that (batch, head) into ctx = acc / l, SB
    records per step (their loads all in flight), in a fixed order
    (deterministic). The rows' CR x BD values are one flat axis of CR*BD
    columns (column j: row j // BD, channel j % BD; a row's m and l are loaded
    once per column, from cache). The max over splits comes first.
    STORE_STATS: also write the merged K statistics of these rows, as
    ``global_context_kernel`` does with one split."""
    head = pid // (BD // CR)
    cols = tl.arange(0, CR * BD)
    row = (pid % (BD // CR)) * CR + cols // BD
    chan = cols % BD
    rec_len = BD * BD + 2 * BD
    base = ws_ptr + head.to(tl.int64) * S * rec_len
    sb = tl.arange(0, SB)
    m = tl.full([CR * BD], float("-inf"), tl.float32)
    for s0 in range(0, S, SB):
        ok = (s0 + sb < S)[:, None]
        mr = tl.load(base + (s0 + sb)[:, None] * rec_len + row[None, :], mask=ok, other=float("-inf"))
        m = tl.maximum(m, tl.reduce(mr, 0, _elementwise_max))
    l = tl.full([CR * BD], 0.0, tl.float32)
    acc = tl.full([CR * BD], 0.0, tl.float32)
    for s0 in range(0, S, SB):
        ok = (s0 + sb < S)[:, None]
        rec = base + (s0 + sb)[:, None] * rec_len
        beta = tl.exp2(tl.load(rec + row[None, :], mask=ok, other=float("-inf")) - m[None, :])  # past S: 0
        l += tl.reduce(tl.load(rec + BD + row[None, :], mask=ok, other=0.0) * beta, 0, _sum_combine)
        part = tl.load(rec + 2 * BD + (row * BD + chan)[None, :], mask=ok, other=0.0) * beta
        acc += tl.reduce(part, 0, _sum_combine)
    ctx = tl.where((row < WIDTH) & (chan < WIDTH), acc / l, 0.0)
    tl.store(ctx_ptr + head.to(tl.int64) * BD * BD + row * BD + chan, ctx.to(ctx_ptr.dtype.element_ty))
    if STORE_STATS:
        tl.store(stats_ptr + head.to(tl.int64) * BD + row, m + tl.log2(l), mask=chan == 0)


@triton.jit
def global_combine_kernel(ws_ptr, ctx_ptr, stats_ptr, WIDTH: tl.constexpr, S: tl.constexpr, BD: tl.constexpr,
                          CR: tl.constexpr, SB: tl.constexpr, STORE_STATS: tl.constexpr):
    """The combine on its own: one program per CR rows of one head's ctx
    (1-D grid of B*G*BD/CR programs); see ``_combine_rows``. With local heads
    the stripe kernel runs these programs first instead (its COMBINE)."""
    _combine_rows(ws_ptr, ctx_ptr, stats_ptr, tl.program_id(0), WIDTH, S, BD, CR, SB, STORE_STATS)


@triton.jit
def global_out_kernel(
    q_ptr, v_ptr, ctx_ptr, w_ptr, b_ptr, o_ptr,
    s_qb, s_qh, s_qn, s_vb, s_vh, s_vn, s_ob, s_oh, s_on, s_wt,
    N, H, W, G,
    WIDTH: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, DOT_PREC: tl.constexpr, LEPE_UNROLL: tl.constexpr,
):
    """out = softmax_channels(q) @ ctx + LePE(v) for BM tokens of one global head."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // G).to(tl.int64)
    hh = pid_bh % G
    offs_n = pid_m * BM + tl.arange(0, BM)
    n_mask = offs_n < N
    offs_c = tl.arange(0, BD)
    c_mask = offs_c < WIDTH
    q = tl.load(q_ptr + b * s_qb + hh * s_qh + offs_n[:, None] * s_qn + offs_c[None, :],
                mask=n_mask[:, None] & c_mask[None, :], other=0.0)
    qf = tl.where(c_mask[None, :], q.to(tl.float32) * LOG2E, float("-inf"))
    e = tl.exp2(qf - tl.reduce(qf, 1, _elementwise_max)[:, None])
    q_hat = e / tl.reduce(e, 1, _sum_combine)[:, None]
    ctx = tl.load(ctx_ptr + pid_bh.to(tl.int64) * BD * BD + offs_c[:, None] * BD + offs_c[None, :])
    acc = tl.dot(q_hat.to(ctx.dtype), ctx, input_precision=DOT_PREC)
    v_base = v_ptr + b * s_vb + hh * s_vh
    acc += _lepe(v_base, s_vn, w_ptr + hh * WIDTH, s_wt, b_ptr + hh * WIDTH, offs_n, offs_c, c_mask, n_mask, H, W, H,
                 LEPE_UNROLL)
    o = o_ptr + b * s_ob + hh * s_oh + offs_n[:, None] * s_on + offs_c[None, :]
    tl.store(o, acc.to(o_ptr.dtype.element_ty), mask=n_mask[:, None] & c_mask[None, :])


@triton.jit
def _stripe_program(
    pid, q_ptr, k_ptr, v_ptr, w_ptr, b_ptr, o_ptr,
    s_qb, s_qh, s_qn, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_ob, s_oh, s_on, s_wt,
    H, W, R, HL, TILES, qk_scale,
    WIDTH: tl.constexpr, L: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, DOT_PREC: tl.constexpr,
    LEPE_UNROLL: tl.constexpr, lse_ptr, STORE_LSE: tl.constexpr,
):
    """Softmax attention inside one stripe of R rows (L = R*W tokens) + stripe LePE.

    Program ``pid`` = (batch*head) * stripes*TILES + stripe*TILES + tile: BM query rows of one stripe
    against the stripe's L keys in BN steps (online softmax, flash style);
    tiles never cross a stripe, so the stripe's bounds are scalars.
    ``qk_scale`` = log2(e) / sqrt(width).
    STORE_LSE (for the backward): also write each query row's log-sum-exp of
    its scaled base-2 scores, m + log2(l), to ``lse_ptr`` (B, HL, N) fp32, so
    that p[i, j] = exp2(q_i . k_j * qk_scale - lse[i]).
    """
    per_head = (H // R) * TILES
    pid_t = pid % per_head
    pid_bh = pid // per_head
    b = (pid_bh // HL).to(tl.int64)
    hh = pid_bh % HL
    stripe = pid_t // TILES
    t = pid_t % TILES
    s0 = stripe * L
    offs_i = t * BM + tl.arange(0, BM)
    m_mask = offs_i < L
    offs_m = s0 + offs_i
    offs_c = tl.arange(0, BD)
    c_mask = offs_c < WIDTH
    q = tl.load(q_ptr + b * s_qb + hh * s_qh + offs_m[:, None] * s_qn + offs_c[None, :],
                mask=m_mask[:, None] & c_mask[None, :], other=0.0)
    k_base = k_ptr + b * s_kb + hh * s_kh
    v_base = v_ptr + b * s_vb + hh * s_vh
    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.full([BM], 0.0, tl.float32)
    acc = tl.full([BM, BD], 0.0, tl.float32)
    for j0 in range(0, L, BN):
        offs_j = j0 + tl.arange(0, BN)
        j_mask = offs_j < L
        kv_off = (s0 + offs_j)[:, None]
        kv_mask = j_mask[:, None] & c_mask[None, :]
        k = tl.load(k_base + kv_off * s_kn + offs_c[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
        if L % BN != 0:  # only a stripe that BN does not divide has key columns to mask
            s = tl.where(j_mask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.reduce(s, 1, _elementwise_max))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.reduce(p, 1, _sum_combine)
        v = tl.load(v_base + kv_off * s_vn + offs_c[None, :], mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
        m_i = m_new
    acc = acc / l_i[:, None]
    if STORE_LSE:
        tl.store(lse_ptr + pid_bh.to(tl.int64) * (H * W) + offs_m, m_i + tl.log2(l_i), mask=m_mask)
    acc += _lepe(v_base, s_vn, w_ptr + hh * WIDTH, s_wt, b_ptr + hh * WIDTH, offs_m, offs_c, c_mask, m_mask, H, W, R,
                 LEPE_UNROLL)
    o = o_ptr + b * s_ob + hh * s_oh + offs_m[:, None] * s_on + offs_c[None, :]
    tl.store(o, acc.to(o_ptr.dtype.element_ty), mask=m_mask[:, None] & c_mask[None, :])


@triton.jit
def stripe_attn_kernel(
    q_ptr, k_ptr, v_ptr, w_ptr, b_ptr, o_ptr,
    s_qb, s_qh, s_qn, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_ob, s_oh, s_on, s_wt,
    H, W, R, HL, TILES, qk_scale,
    WIDTH: tl.constexpr, L: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, DOT_PREC: tl.constexpr,
    LEPE_UNROLL: tl.constexpr,
    lse_ptr, STORE_LSE: tl.constexpr,
    ws_ptr, ctx_ptr, stats_ptr, STRIPES,
    COMBINE: tl.constexpr, C_WIDTH: tl.constexpr, C_S: tl.constexpr, C_BD: tl.constexpr, C_CR: tl.constexpr,
    C_SB: tl.constexpr, C_STATS: tl.constexpr,
):
    """The local heads' stripes (``_stripe_program``: programs [0, STRIPES)), 1-D
    grid. COMBINE: the programs after those are the global branch's combine
    (``_combine_rows`` with the C_* constants), so it needs no launch of its own;
    last, they take the slots the stripes' last wave leaves idle (first, they
    delayed that many stripe programs by their own time: 6 us at 1024 px, H200)."""
    pid = tl.program_id(0)
    if COMBINE:
        if pid < STRIPES:
            _stripe_program(pid, q_ptr, k_ptr, v_ptr, w_ptr, b_ptr, o_ptr, s_qb, s_qh, s_qn, s_kb, s_kh, s_kn,
                            s_vb, s_vh, s_vn, s_ob, s_oh, s_on, s_wt, H, W, R, HL, TILES, qk_scale, WIDTH, L, BM, BN,
                            BD, DOT_PREC, LEPE_UNROLL, lse_ptr, STORE_LSE)
        else:
            _combine_rows(ws_ptr, ctx_ptr, stats_ptr, pid - STRIPES, C_WIDTH, C_S, C_BD, C_CR, C_SB, C_STATS)
    else:
        _stripe_program(pid, q_ptr, k_ptr, v_ptr, w_ptr, b_ptr, o_ptr, s_qb, s_qh, s_qn, s_kb, s_kh, s_kn,
                        s_vb, s_vh, s_vn, s_ob, s_oh, s_on, s_wt, H, W, R, HL, TILES, qk_scale, WIDTH, L, BM, BN,
                        BD, DOT_PREC, LEPE_UNROLL, lse_ptr, STORE_LSE)


@triton.jit
def stripe_epilogue_kernel(
    a_ptr, v_ptr, w_ptr, b_ptr, o_ptr,
    s_ab, s_as, s_ah, s_at, s_vb, s_vh, s_vn, s_ob, s_oh, s_on, s_wt,
    H, W, R, HL, TILES,
    WIDTH: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, LEPE_UNROLL: tl.constexpr,
):
    """out = a + stripe LePE(v), where ``a`` is an attention output computed
    elsewhere (SDPA on the stripes), addressed as (batch, stripe, head, token
    in stripe) so that either blocked layout SDPA returns works uncopied."""
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // HL).to(tl.int64)
    hh = pid_bh % HL
    L = R * W
    stripe = pid_t // TILES
    t = pid_t % TILES
    offs_i = t * BM + tl.arange(0, BM)
    m_mask = offs_i < L
    offs_m = stripe * L + offs_i
    offs_c = tl.arange(0, BD)
    c_mask = offs_c < WIDTH
    mask = m_mask[:, None] & c_mask[None, :]
    a = tl.load(a_ptr + b * s_ab + stripe.to(tl.int64) * s_as + hh * s_ah + offs_i[:, None] * s_at + offs_c[None, :],
                mask=mask, other=0.0)
    v_base = v_ptr + b * s_vb + hh * s_vh
    acc = a.to(tl.float32) + _lepe(v_base, s_vn, w_ptr + hh * WIDTH, s_wt, b_ptr + hh * WIDTH,
                                   offs_m, offs_c, c_mask, m_mask, H, W, R, LEPE_UNROLL)
    o = o_ptr + b * s_ob + hh * s_oh + offs_m[:, None] * s_on + offs_c[None, :]
    tl.store(o, acc.to(o_ptr.dtype.element_ty), mask=mask)
