"""Triton kernels of the fused ELFATT backward (launched from ``elfatt_backward.py``).

Imported lazily like ``elfatt_triton.py`` and under the same conventions:
(batch, head, token) element strides with channel stride 1, int64 batch
offsets, int32 token offsets; ``BD`` the branch width padded to a power of two
>= 16 with masked channels; exp2 on log2(e)-scaled logits; only triton
builtins (``tl.reduce`` with ``_elementwise_max`` / ``_sum_combine``, no
tl.max / tl.sum / tl.zeros); constexpr WIDTH and constexpr loop trip counts.
The helpers below are this module's own (not the forward module's), so each
module is reloaded on its own when TRITON_INTERPRET changes.

Statistics saved by the forward (see elfatt_backward.py):
- global branch: ctx (B*G, BD, BD) in the input dtype, zero-padded, and
  ``kstats`` (B*G, BD) fp32 with k_hat[n, c] = exp2(k[n, c]*log2(e) - kstats[c]);
- local branch: ``lse`` (B, HL, N) fp32 with p[i, j] = exp2(q_i.k_j*qk_scale - lse[i]),
  qk_scale = log2(e)/sqrt(width).

Determinism: every gradient element is written by exactly one program; sums
over tokens and batch (d_ctx, LePE weights and bias) go as per-program fp32
partials to a workspace and are merged in index order by a merge launch.
No atomics.

Three launches (``bwd_reduce_kernel``, ``bwd_merge_kernel``,
``bwd_tiles_kernel``), each running several roles (the ``_`` helpers) by
ranges of its 1-D program index; every role's program index is laid out as
its old 2-D grid was (batch*head outermost).

LePE records: (NTAP, BD) fp32 per (batch*head, token split); row ky*3+kx holds
sum_n do[n, c] * v[n + (ky-1)*W + (kx-1), c] over the split's tokens whose
neighbour lies in their band of R rows (R = H: global, R = block_rows: local),
row 9 holds sum_n do[n, c] (the bias gradient), rows 10..15 are padding.
"""
from __future__ import annotations

import triton
import triton.language as tl
from triton.language.standard import _elementwise_max, _sum_combine

INTERPRETED = bool(triton.knobs.runtime.interpret)
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
NTAP = tl.constexpr(16)  # LePE record rows: 9 taps, the bias, padding to a power of two


@triton.jit
def _lepe_wgrad(wacc, do_f, v_base, s_vn, w_base, s_wt, b_base, offs_n, offs_c, c_mask, n_mask, W, R,
                FWD: tl.constexpr):
    """Add one tile's LePE weight and bias gradient sums to ``wacc`` (NTAP, BD)
    fp32 (layout in the module docstring); ``do_f`` is the tile's (BM, BD)
    output gradient in fp32, zero on masked rows. FWD: also return the LePE
    itself, conv(v) + bias (BM, BD) fp32, from the same nine loads of v."""
    row = offs_n // W
    col = offs_n % W
    lo = (row // R) * R
    taps = tl.arange(0, NTAP)
    conv = tl.full([offs_n.shape[0], offs_c.shape[0]], 0.0, tl.float32)
    for ky in range(3):
        r2 = row + (ky - 1)
        row_ok = n_mask & (r2 >= lo) & (r2 < lo + R)
        for kx in range(3):
            c2 = col + (kx - 1)
            ok = row_ok & (c2 >= 0) & (c2 < W)
            nb = offs_n + ((ky - 1) * W + (kx - 1))
            vv = tl.load(v_base + nb[:, None] * s_vn + offs_c[None, :], mask=ok[:, None] & c_mask[None, :],
                         other=0.0).to(tl.float32)
            part = tl.reduce(do_f * vv, 0, _sum_combine)
            wacc += tl.where(taps[:, None] == ky * 3 + kx, part[None, :], 0.0)
            if FWD:
                wt = tl.load(w_base + (ky * 3 + kx) * s_wt + offs_c, mask=c_mask, other=0.0)
                conv += vv * wt.to(tl.float32)[None, :]
    wacc += tl.where(taps[:, None] == 9, tl.reduce(do_f, 0, _sum_combine)[None, :], 0.0)
    if FWD:
        conv += tl.load(b_base + offs_c, mask=c_mask, other=0.0).to(tl.float32)[None, :]
    return wacc, conv


@triton.jit
def _lepe_t(g_base, s_gn, w_base, s_wt, offs_n, offs_c, c_mask, n_mask, W, R):
    """The LePE's transpose applied to the output gradient at tokens ``offs_n``
    (its contribution to dv), (BM, BD) fp32: sum over taps of
    w[tap, c] * g[n - offset(tap), c], where the source token lies in n's band
    of R rows and does not wrap across a row end (the forward's zero padding)."""
    row = offs_n // W
    col = offs_n % W
    lo = (row // R) * R
    out = tl.full([offs_n.shape[0], offs_c.shape[0]], 0.0, tl.float32)
    for ky in range(3):
        r2 = row - (ky - 1)
        row_ok = n_mask & (r2 >= lo) & (r2 < lo + R)
        for kx in range(3):
            c2 = col - (kx - 1)
            ok = row_ok & (c2 >= 0) & (c2 < W)
            nb = offs_n - ((ky - 1) * W + (kx - 1))
            g = tl.load(g_base + nb[:, None] * s_gn + offs_c[None, :], mask=ok[:, None] & c_mask[None, :], other=0.0)
            wt = tl.load(w_base + (ky * 3 + kx) * s_wt + offs_c, mask=c_mask, other=0.0)
            out += g.to(tl.float32) * wt.to(tl.float32)[None, :]
    return out


@triton.jit
def _softmax_rows(x, c_mask):
    """Softmax over the (masked) channels of each row, fp32."""
    xf = tl.where(c_mask[None, :], x.to(tl.float32) * LOG2E, float("-inf"))
    e = tl.exp2(xf - tl.reduce(xf, 1, _elementwise_max)[:, None])
    return e / tl.reduce(e, 1, _sum_combine)[:, None]


@triton.jit
def _global_partial(
    pid, q_ptr, v_ptr, do_ptr, ws_ptr, wws_ptr,
    s_qb, s_qh, s_qn, s_vb, s_vh, s_vn, s_db, s_dh, s_dn,
    N, W, G, S,
    WIDTH: tl.constexpr, CHUNK: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """Program ``pid`` = batch*head * S + token split: the split's share of d_ctx = q_hat^T do
    into ``ws`` (B*G*S, BD, BD) fp32 and of the global LePE's weight and bias
    gradients into ``wws`` (B*G*S, NTAP, BD) fp32, one pass over CHUNK tokens."""
    pid_s = pid % S
    pid_bh = pid // S
    b = (pid_bh // G).to(tl.int64)
    hh = (pid_bh % G).to(tl.int64)
    q_base = q_ptr + b * s_qb + hh * s_qh
    d_base = do_ptr + b * s_db + hh * s_dh
    v_base = v_ptr + b * s_vb + hh * s_vh
    offs_c = tl.arange(0, BD)
    c_mask = offs_c < WIDTH
    acc = tl.full([BD, BD], 0.0, tl.float32)
    wacc = tl.full([NTAP, BD], 0.0, tl.float32)
    start = pid_s * CHUNK
    end = tl.minimum(start + CHUNK, N)
    for n0 in range(0, CHUNK, BM):
        offs_n = start + n0 + tl.arange(0, BM)
        n_mask = offs_n < end
        mask = n_mask[:, None] & c_mask[None, :]
        q = tl.load(q_base + offs_n[:, None] * s_qn + offs_c[None, :], mask=mask, other=0.0)
        do = tl.load(d_base + offs_n[:, None] * s_dn + offs_c[None, :], mask=mask, other=0.0)
        q_hat = _softmax_rows(q, c_mask)  # masked rows are 1/WIDTH, but their do is 0
        acc += tl.dot(tl.trans(q_hat.to(do.dtype)), do, input_precision=DOT_PREC)
        wacc, _ = _lepe_wgrad(wacc, do.to(tl.float32), v_base, s_vn, v_base, 0, v_base, offs_n, offs_c, c_mask, n_mask,
                              W, N // W, False)
    rec = pid_bh.to(tl.int64) * S + pid_s
    tl.store(ws_ptr + rec * BD * BD + offs_c[:, None] * BD + offs_c[None, :], acc)
    taps = tl.arange(0, NTAP)
    tl.store(wws_ptr + rec * NTAP * BD + taps[:, None] * BD + offs_c[None, :], wacc)


@triton.jit
def _dctx_rows(pid, ws_ptr, ctx_ptr, dctx_ptr, col_ptr, S: tl.constexpr, BD: tl.constexpr, CR: tl.constexpr):
    """Program ``pid`` = head * (BD/CR) + row block: merge the S d_ctx partials of
    CR rows of one (batch, head), in split order, into ``dctx`` (B*G, BD, BD)
    fp32, and write the dk column term col[c] = sum_j ctx[c, j] * d_ctx[c, j]
    (= sum_n k_hat[n, c] * (v d_ctx^T)[n, c]) to ``col`` (B*G, BD) fp32."""
    head = (pid // (BD // CR)).to(tl.int64)
    rows = (pid % (BD // CR)) * CR + tl.arange(0, CR)
    offs_c = tl.arange(0, BD)
    offs = rows[:, None] * BD + offs_c[None, :]
    base = ws_ptr + head * S * BD * BD
    acc = tl.full([CR, BD], 0.0, tl.float32)
    for s in range(S):
        acc += tl.load(base + s * BD * BD + offs)
    ctx = tl.load(ctx_ptr + head * BD * BD + offs).to(tl.float32)
    tl.store(dctx_ptr + head * BD * BD + offs, acc)
    tl.store(col_ptr + head * BD + rows, tl.reduce(ctx * acc, 1, _sum_combine))


@triton.jit
def _global_tile(
    pid, q_ptr, k_ptr, v_ptr, do_ptr, ctx_ptr, kst_ptr, dctx_ptr, col_ptr, w_ptr, dq_ptr, dk_ptr, dv_ptr,
    s_qb, s_qh, s_qn, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_db, s_dh, s_dn,
    s_gqb, s_gqh, s_gqn, s_gkb, s_gkh, s_gkn, s_gvb, s_gvh, s_gvn, s_wt,
    N, W, G,
    WIDTH: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """dq, dk, dv of BM tokens of one global head:
    dq = q_hat * (g - rowsum(g * q_hat)) with g = do ctx^T;
    dk = k_hat * (v d_ctx^T - col); dv = k_hat d_ctx + LePE^T(do).
    Written in that order, so few tiles are live at once.
    Program ``pid`` = batch*head * ceil(N / BM) + token tile."""
    tiles = (N + BM - 1) // BM
    pid_m = pid % tiles
    pid_bh = pid // tiles
    b = (pid_bh // G).to(tl.int64)
    hh = pid_bh % G
    offs_n = pid_m * BM + tl.arange(0, BM)
    n_mask = offs_n < N
    offs_c = tl.arange(0, BD)
    c_mask = offs_c < WIDTH
    mask = n_mask[:, None] & c_mask[None, :]
    tok = offs_n[:, None]
    chan = offs_c[None, :]
    head = pid_bh.to(tl.int64)
    offs_cc = offs_c[:, None] * BD + offs_c[None, :]
    q = tl.load(q_ptr + b * s_qb + hh * s_qh + tok * s_qn + chan, mask=mask, other=0.0)
    d_base = do_ptr + b * s_db + hh * s_dh
    do = tl.load(d_base + tok * s_dn + chan, mask=mask, other=0.0)
    q_hat = _softmax_rows(q, c_mask)
    ctx = tl.load(ctx_ptr + head * BD * BD + offs_cc)
    g = tl.dot(do, tl.trans(ctx), input_precision=DOT_PREC)
    dq = q_hat * (g - tl.reduce(g * q_hat, 1, _sum_combine)[:, None])
    tl.store(dq_ptr + b * s_gqb + hh * s_gqh + tok * s_gqn + chan, dq.to(dq_ptr.dtype.element_ty), mask=mask)
    dctx = tl.load(dctx_ptr + head * BD * BD + offs_cc).to(q_ptr.dtype.element_ty)
    k = tl.load(k_ptr + b * s_kb + hh * s_kh + tok * s_kn + chan, mask=mask, other=0.0)
    kst = tl.load(kst_ptr + head * BD + offs_c)
    k_hat = tl.exp2(k.to(tl.float32) * LOG2E - kst[None, :])
    v = tl.load(v_ptr + b * s_vb + hh * s_vh + tok * s_vn + chan, mask=mask, other=0.0)
    col = tl.load(col_ptr + head * BD + offs_c)
    dk = k_hat * (tl.dot(v, tl.trans(dctx), input_precision=DOT_PREC) - col[None, :])
    tl.store(dk_ptr + b * s_gkb + hh * s_gkh + tok * s_gkn + chan, dk.to(dk_ptr.dtype.element_ty), mask=mask)
    dv = tl.dot(k_hat.to(dctx.dtype), dctx, input_precision=DOT_PREC)
    dv += _lepe_t(d_base, s_dn, w_ptr + hh * WIDTH, s_wt, offs_n, offs_c, c_mask, n_mask, W, N // W)
    tl.store(dv_ptr + b * s_gvb + hh * s_gvh + tok * s_gvn + chan, dv.to(dv_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _lepe_merge(pid, wws_ptr, dw_ptr, db_ptr, G, WIDTH: tl.constexpr, B: tl.constexpr, S: tl.constexpr,
                BD: tl.constexpr, TR: tl.constexpr, CB: tl.constexpr):
    """Program ``pid`` = ((head * cdiv(10, TR)) + tap block) * (BD/CB) + channel block:
    merge that (TR, CB) block of one head's LePE records over batch and splits,
    in index order, into dw (G*WIDTH, 9) channel-major (the conv's own layout;
    taps-first is its transpose) and db (G*WIDTH,), in their dtypes. Records
    are indexed (b*G + head)*S + split; B and S are trip counts, so constexpr."""
    per_head = ((10 + TR - 1) // TR) * (BD // CB)  # tap blocks holding rows 0..9 (taps and bias)
    hh = pid // per_head
    tb = (pid % per_head) // (BD // CB)
    taps = tb * TR + tl.arange(0, TR)
    offs_c = (pid % (BD // CB)) * CB + tl.arange(0, CB)
    offs = taps[:, None] * BD + offs_c[None, :]
    acc = tl.full([TR, CB], 0.0, tl.float32)
    for b in range(B):
        for s in range(S):
            rec = ((b * G + hh) * S + s).to(tl.int64)
            acc += tl.load(wws_ptr + rec * NTAP * BD + offs)
    chan = hh * WIDTH + offs_c
    c_mask = offs_c < WIDTH
    tl.store(dw_ptr + chan[None, :] * 9 + taps[:, None], acc.to(dw_ptr.dtype.element_ty),
             mask=(taps < 9)[:, None] & c_mask[None, :])
    db = tl.reduce(tl.where(taps[:, None] == 9, acc, 0.0), 0, _sum_combine)
    has_bias = (tb * TR <= 9) & (tb * TR + TR > 9)
    tl.store(db_ptr + chan, db.to(db_ptr.dtype.element_ty), mask=c_mask & has_bias)


@triton.jit
def _stripe_pre(
    pid, o_ptr, do_ptr, v_ptr, w_ptr, b_ptr, delta_ptr, wws_ptr,
    s_ob, s_oh, s_on, s_db, s_dh, s_dn, s_vb, s_vh, s_vn, s_wt,
    N, W, R, HL, S,
    WIDTH: tl.constexpr, CHUNK: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr,
):
    """Per (token split, batch*head) over CHUNK tokens: delta_i = rowsum(do_i * a_i)
    where a = out - LePE(v) is the attention part of the forward's output
    (the LePE recomputed, not saved), stored to ``delta`` (B*HL, N) fp32; and
    the split's stripe-LePE weight and bias gradient record into ``wws``. Token
    tiles may cross stripes: both only need each token's band.
    Program ``pid`` = batch*head * S + token split."""
    pid_s = pid % S
    pid_bh = pid // S
    b = (pid_bh // HL).to(tl.int64)
    hh = (pid_bh % HL).to(tl.int64)
    o_base = o_ptr + b * s_ob + hh * s_oh
    d_base = do_ptr + b * s_db + hh * s_dh
    v_base = v_ptr + b * s_vb + hh * s_vh
    offs_c = tl.arange(0, BD)
    c_mask = offs_c < WIDTH
    wacc = tl.full([NTAP, BD], 0.0, tl.float32)
    start = pid_s * CHUNK
    end = tl.minimum(start + CHUNK, N)
    for n0 in range(0, CHUNK, BM):
        offs_n = start + n0 + tl.arange(0, BM)
        n_mask = offs_n < end
        mask = n_mask[:, None] & c_mask[None, :]
        do = tl.load(d_base + offs_n[:, None] * s_dn + offs_c[None, :], mask=mask, other=0.0).to(tl.float32)
        wacc, lepe = _lepe_wgrad(wacc, do, v_base, s_vn, w_ptr + hh * WIDTH, s_wt, b_ptr + hh * WIDTH,
                                 offs_n, offs_c, c_mask, n_mask, W, R, True)
        o = tl.load(o_base + offs_n[:, None] * s_on + offs_c[None, :], mask=mask, other=0.0).to(tl.float32)
        delta = tl.reduce(do * tl.where(mask, o - lepe, 0.0), 1, _sum_combine)
        tl.store(delta_ptr + pid_bh.to(tl.int64) * N + offs_n, delta, mask=n_mask)
    taps = tl.arange(0, NTAP)
    rec = pid_bh.to(tl.int64) * S + pid_s
    tl.store(wws_ptr + rec * NTAP * BD + taps[:, None] * BD + offs_c[None, :], wacc)


@triton.jit
def _stripe_dkdv(
    pid, q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, w_ptr, dk_ptr, dv_ptr,
    s_qb, s_qh, s_qn, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_db, s_dh, s_dn,
    s_gkb, s_gkh, s_gkn, s_gvb, s_gvh, s_gvn, s_wt,
    N, W, R, HL, TILES, qk_scale,
    WIDTH: tl.constexpr, L: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """dk, dv of BN keys of one stripe,
    looping over the stripe's queries in BM steps with the scores recomputed
    transposed, s^T = k q^T, from the saved lse:
    p^T = exp2(s^T - lse), dv += p^T do, ds^T = p^T * (v do^T - delta), dk += ds^T q;
    then dk /= sqrt(width) and dv += LePE^T(do) inside the stripe.
    Program ``pid`` = batch*head * stripes*TILES + stripe*TILES + tile."""
    per_head = (N // L) * TILES
    pid_t = pid % per_head
    pid_bh = pid // per_head
    b = (pid_bh // HL).to(tl.int64)
    hh = pid_bh % HL
    s0 = (pid_t // TILES) * L
    offs_j = (pid_t % TILES) * BN + tl.arange(0, BN)
    j_mask = offs_j < L
    tok_j = s0 + offs_j
    offs_c = tl.arange(0, BD)
    c_mask = offs_c < WIDTH
    kv_mask = j_mask[:, None] & c_mask[None, :]
    k = tl.load(k_ptr + b * s_kb + hh * s_kh + tok_j[:, None] * s_kn + offs_c[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_ptr + b * s_vb + hh * s_vh + tok_j[:, None] * s_vn + offs_c[None, :], mask=kv_mask, other=0.0)
    q_base = q_ptr + b * s_qb + hh * s_qh
    d_base = do_ptr + b * s_db + hh * s_dh
    row_base = pid_bh.to(tl.int64) * N + s0
    dk = tl.full([BN, BD], 0.0, tl.float32)
    dv = tl.full([BN, BD], 0.0, tl.float32)
    for i0 in range(0, L, BM):
        offs_i = i0 + tl.arange(0, BM)
        i_mask = offs_i < L
        q_mask = i_mask[:, None] & c_mask[None, :]
        q = tl.load(q_base + (s0 + offs_i)[:, None] * s_qn + offs_c[None, :], mask=q_mask, other=0.0)
        do = tl.load(d_base + (s0 + offs_i)[:, None] * s_dn + offs_c[None, :], mask=q_mask, other=0.0)
        lse = tl.load(lse_ptr + row_base + offs_i, mask=i_mask, other=float("inf"))  # masked queries: p = 0
        delta = tl.load(delta_ptr + row_base + offs_i, mask=i_mask, other=0.0)
        p_t = tl.exp2(tl.dot(k, tl.trans(q), input_precision=DOT_PREC) * qk_scale - lse[None, :])
        dv += tl.dot(p_t.to(do.dtype), do, input_precision=DOT_PREC)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(ds_t.to(q.dtype), q, input_precision=DOT_PREC)
    dk = dk * (qk_scale * LN2)
    tl.store(dk_ptr + b * s_gkb + hh * s_gkh + tok_j[:, None] * s_gkn + offs_c[None, :], dk.to(dk_ptr.dtype.element_ty),
             mask=kv_mask)
    dv += _lepe_t(d_base, s_dn, w_ptr + hh * WIDTH, s_wt, tok_j, offs_c, c_mask, j_mask, W, R)
    tl.store(dv_ptr + b * s_gvb + hh * s_gvh + tok_j[:, None] * s_gvn + offs_c[None, :], dv.to(dv_ptr.dtype.element_ty),
             mask=kv_mask)


@triton.jit
def _stripe_dq(
    pid, q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
    s_qb, s_qh, s_qn, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_db, s_dh, s_dn, s_gqb, s_gqh, s_gqn,
    N, HL, TILES, qk_scale,
    WIDTH: tl.constexpr, L: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """dq of BM queries of one stripe, looping over the stripe's keys in BN
    steps: p = exp2(q k^T * qk_scale - lse), ds = p * (do v^T - delta),
    dq += ds k; then dq /= sqrt(width).
    Program ``pid`` = batch*head * stripes*TILES + stripe*TILES + tile."""
    per_head = (N // L) * TILES
    pid_t = pid % per_head
    pid_bh = pid // per_head
    b = (pid_bh // HL).to(tl.int64)
    hh = pid_bh % HL
    s0 = (pid_t // TILES) * L
    offs_i = (pid_t % TILES) * BM + tl.arange(0, BM)
    i_mask = offs_i < L
    tok_i = s0 + offs_i
    offs_c = tl.arange(0, BD)
    c_mask = offs_c < WIDTH
    q_mask = i_mask[:, None] & c_mask[None, :]
    q = tl.load(q_ptr + b * s_qb + hh * s_qh + tok_i[:, None] * s_qn + offs_c[None, :], mask=q_mask, other=0.0)
    do = tl.load(do_ptr + b * s_db + hh * s_dh + tok_i[:, None] * s_dn + offs_c[None, :], mask=q_mask, other=0.0)
    row_base = pid_bh.to(tl.int64) * N
    lse = tl.load(lse_ptr + row_base + tok_i, mask=i_mask, other=float("inf"))
    delta = tl.load(delta_ptr + row_base + tok_i, mask=i_mask, other=0.0)
    k_base = k_ptr + b * s_kb + hh * s_kh
    v_base = v_ptr + b * s_vb + hh * s_vh
    dq = tl.full([BM, BD], 0.0, tl.float32)
    for j0 in range(0, L, BN):
        offs_j = j0 + tl.arange(0, BN)
        j_mask = offs_j < L
        kv_off = (s0 + offs_j)[:, None]
        kv_mask = j_mask[:, None] & c_mask[None, :]
        k = tl.load(k_base + kv_off * s_kn + offs_c[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
        if L % BN != 0:  # keys past the stripe: p = 0 (their k is 0, but p * 0 could be inf * 0)
            s = tl.where(j_mask[None, :], s, float("-inf"))
        p = tl.exp2(s - lse[:, None])
        v = tl.load(v_base + kv_off * s_vn + offs_c[None, :], mask=kv_mask, other=0.0)
        ds = p * (tl.dot(do, tl.trans(v), input_precision=DOT_PREC) - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PREC)
    dq = dq * (qk_scale * LN2)
    tl.store(dq_ptr + b * s_gqb + hh * s_gqh + tok_i[:, None] * s_gqn + offs_c[None, :], dq.to(dq_ptr.dtype.element_ty),
             mask=q_mask)


# -- launches: each runs several roles, by ranges of its 1-D program index ---
# A role is on when its constexpr flag is; the roles' program counts (P_*)
# are run-time. Launched one role at a time (the other flags off), each entry
# is also each role on its own.
@triton.jit
def bwd_reduce_kernel(
    gq_ptr, gv_ptr, gdo_ptr, ws_ptr, gwws_ptr,
    lo_ptr, ldo_ptr, lv_ptr, lw_ptr, lb_ptr, delta_ptr, lwws_ptr,
    s_qb, s_qh, s_qn, s_vb, s_vh, s_vn, s_db, s_dh, s_dn, s_ob, s_oh, s_on, l_s_wt,
    N, W, R, G, HL, S_G, S_L, P_G,
    HAS_G: tl.constexpr, HAS_L: tl.constexpr, BM: tl.constexpr,
    G_WIDTH: tl.constexpr, G_BD: tl.constexpr, G_CHUNK: tl.constexpr, DOT_PREC: tl.constexpr,
    L_WIDTH: tl.constexpr, L_BD: tl.constexpr, L_CHUNK: tl.constexpr,
):
    """The token reductions: programs [0, P_G) ``_global_partial`` (d_ctx and
    global LePE records), then ``_stripe_pre`` (delta and stripe LePE records)."""
    pid = tl.program_id(0)
    if HAS_G:
        if pid < P_G:
            _global_partial(pid, gq_ptr, gv_ptr, gdo_ptr, ws_ptr, gwws_ptr, s_qb, s_qh, s_qn, s_vb, s_vh, s_vn,
                            s_db, s_dh, s_dn, N, W, G, S_G, G_WIDTH, G_CHUNK, BM, G_BD, DOT_PREC)
    if HAS_L:
        if pid >= P_G:
            _stripe_pre(pid - P_G, lo_ptr, ldo_ptr, lv_ptr, lw_ptr, lb_ptr, delta_ptr, lwws_ptr, s_ob, s_oh, s_on,
                        s_db, s_dh, s_dn, s_vb, s_vh, s_vn, l_s_wt, N, W, R, HL, S_L, L_WIDTH, L_CHUNK, BM, L_BD)


@triton.jit
def bwd_merge_kernel(
    ws_ptr, ctx_ptr, dctx_ptr, col_ptr, gwws_ptr, gdw_ptr, gdb_ptr, lwws_ptr, ldw_ptr, ldb_ptr,
    G, HL, P_D, P_GL,
    HAS_G: tl.constexpr, HAS_L: tl.constexpr, B: tl.constexpr, CR: tl.constexpr, TR: tl.constexpr,
    CB: tl.constexpr, G_WIDTH: tl.constexpr, G_BD: tl.constexpr, S_G: tl.constexpr,
    L_WIDTH: tl.constexpr, L_BD: tl.constexpr, S_L: tl.constexpr,
):
    """The merges of the reductions' records, in fixed order: programs [0, P_D)
    ``_dctx_rows``, the next P_GL the global LePE gradients, the rest the
    stripe LePE gradients (``_lepe_merge``)."""
    pid = tl.program_id(0)
    if HAS_G:
        if pid < P_D:
            _dctx_rows(pid, ws_ptr, ctx_ptr, dctx_ptr, col_ptr, S_G, G_BD, CR)
        if pid >= P_D:
            if pid < P_D + P_GL:
                _lepe_merge(pid - P_D, gwws_ptr, gdw_ptr, gdb_ptr, G, G_WIDTH, B, S_G, G_BD, TR, CB)
    if HAS_L:
        if pid >= P_D + P_GL:
            _lepe_merge(pid - P_D - P_GL, lwws_ptr, ldw_ptr, ldb_ptr, HL, L_WIDTH, B, S_L, L_BD, TR, CB)


@triton.jit
def bwd_tiles_kernel(
    gq_ptr, gk_ptr, gv_ptr, gdo_ptr, ctx_ptr, kst_ptr, dctx_ptr, col_ptr, gw_ptr, gdq_ptr, gdk_ptr, gdv_ptr,
    lq_ptr, lk_ptr, lv_ptr, ldo_ptr, lse_ptr, delta_ptr, lw_ptr, ldq_ptr, ldk_ptr, ldv_ptr,
    s_qb, s_qh, s_qn, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_db, s_dh, s_dn,
    s_gqb, s_gqh, s_gqn, s_gkb, s_gkh, s_gkn, s_gvb, s_gvh, s_gvn, g_s_wt, l_s_wt,
    N, W, R, G, HL, KV_TILES, Q_TILES, qk_scale, P_G, P_KV,
    R_G: tl.constexpr, R_KV: tl.constexpr, R_Q: tl.constexpr, DOT_PREC: tl.constexpr,
    G_WIDTH: tl.constexpr, G_BM: tl.constexpr, G_BD: tl.constexpr,
    L_WIDTH: tl.constexpr, L: tl.constexpr, L_BD: tl.constexpr, KV_BM: tl.constexpr, KV_BN: tl.constexpr,
    Q_BM: tl.constexpr, Q_BN: tl.constexpr,
):
    """The gradient tiles: programs [0, P_G) ``_global_tile``, the next P_KV
    ``_stripe_dkdv``, the rest ``_stripe_dq``."""
    pid = tl.program_id(0)
    if R_G:
        if pid < P_G:
            _global_tile(pid, gq_ptr, gk_ptr, gv_ptr, gdo_ptr, ctx_ptr, kst_ptr, dctx_ptr, col_ptr, gw_ptr, gdq_ptr,
                         gdk_ptr, gdv_ptr, s_qb, s_qh, s_qn, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_db, s_dh, s_dn,
                         s_gqb, s_gqh, s_gqn, s_gkb, s_gkh, s_gkn, s_gvb, s_gvh, s_gvn, g_s_wt, N, W, G,
                         G_WIDTH, G_BM, G_BD, DOT_PREC)
    if R_KV:
        if pid >= P_G:
            if pid < P_G + P_KV:
                _stripe_dkdv(pid - P_G, lq_ptr, lk_ptr, lv_ptr, ldo_ptr, lse_ptr, delta_ptr, lw_ptr, ldk_ptr, ldv_ptr,
                             s_qb, s_qh, s_qn, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_db, s_dh, s_dn,
                             s_gkb, s_gkh, s_gkn, s_gvb, s_gvh, s_gvn, l_s_wt, N, W, R, HL, KV_TILES, qk_scale,
                             L_WIDTH, L, KV_BM, KV_BN, L_BD, DOT_PREC)
    if R_Q:
        if pid >= P_G + P_KV:
            _stripe_dq(pid - P_G - P_KV, lq_ptr, lk_ptr, lv_ptr, ldo_ptr, lse_ptr, delta_ptr, ldq_ptr,
                       s_qb, s_qh, s_qn, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_db, s_dh, s_dn, s_gqb, s_gqh, s_gqn,
                       N, HL, Q_TILES, qk_scale, L_WIDTH, L, Q_BM, Q_BN, L_BD, DOT_PREC)
