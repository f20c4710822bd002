"""ELFATT reference vs an independent float64 reference written from the
definition in the README ("ELFATT, exactly").

The reference below deliberately uses loops over heads and stripes, explicit
softmax and its own convolution padding, so it shares no code with
attentions/elfatt.py.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import attentions as A
from refs import check_grid
from attentions.elfatt import default_block_rows


def dwconv3x3(m, weight, bias):
    """Depthwise 3x3, zero padding 1, written out as 9 shifted sums. m: (C, H, W)."""
    C, H, W = m.shape
    p = F.pad(m, (1, 1, 1, 1))
    out = torch.zeros_like(m)
    for di in range(3):
        for dj in range(3):
            out += weight[:, 0, di, dj].view(C, 1, 1) * p[:, di : di + H, dj : dj + W]
    return out + bias.view(C, 1, 1)


def elfatt_spec(x, module, hw, g=None, block_rows=None):
    """ELFATT for one image x (N, C), float64, from the spec."""
    H, W = hw
    N, C = x.shape
    h = module.num_heads
    d = C // h
    qkv = x @ module.qkv.weight.double().T + module.qkv.bias.double()  # (N, 3C)
    q, k, v = qkv[:, :C], qkv[:, C : 2 * C], qkv[:, 2 * C :]
    r = block_rows or default_block_rows(H)
    if h == 1:
        groups = [("global", slice(0, d // 2)), ("local", slice(d // 2, d))]
    else:
        g = h // 2 if g is None else g
        groups = [("global" if i < g else "local", slice(i * d, (i + 1) * d)) for i in range(h)]
    outs = []
    glob_ch = [c for kind, s in groups if kind == "global" for c in range(s.start, s.stop)]
    for kind, s in groups:
        qh, kh, vh = q[:, s], k[:, s], v[:, s]
        if kind == "global":
            qs = torch.exp(qh) / torch.exp(qh).sum(1, keepdim=True)
            ks = torch.exp(kh) / torch.exp(kh).sum(0, keepdim=True)
            o = qs @ (ks.T @ vh)
            conv = module.lepe_global
            idx = [glob_ch.index(c) for c in range(s.start, s.stop)]
            vmap = vh.T.reshape(-1, H, W)
            o = o + dwconv3x3(vmap, conv.weight.double()[idx], conv.bias.double()[idx]).reshape(-1, N).T
        else:
            o = torch.zeros_like(vh)
            loc_ch = [c for kk, ss in groups if kk == "local" for c in range(ss.start, ss.stop)]
            idx = [loc_ch.index(c) for c in range(s.start, s.stop)]
            conv = module.lepe_local
            for b in range(H // r):
                rows = slice(b * r * W, (b + 1) * r * W)
                sc = qh[rows] @ kh[rows].T / math.sqrt(qh.shape[1])
                p = torch.exp(sc - sc.max(1, keepdim=True).values)
                o[rows] = (p / p.sum(1, keepdim=True)) @ vh[rows]
                vmap = vh[rows].T.reshape(-1, r, W)  # this stripe alone: zero padding at its edges
                o[rows] += dwconv3x3(vmap, conv.weight.double()[idx], conv.bias.double()[idx]).reshape(-1, r * W).T
        outs.append(o)
    out = torch.cat(outs, dim=1)
    return out @ module.proj.weight.double().T + module.proj.bias.double()


def check(dim, heads, hw, batch=2, lepe=True, **kw):
    torch.manual_seed(1)
    m = A.create_attention("elfatt", dim, heads, **kw).double()
    if not lepe:
        for conv in (m.lepe_global, m.lepe_local):
            if conv is not None:
                torch.nn.init.zeros_(conv.weight)
                torch.nn.init.zeros_(conv.bias)
    else:  # larger than default init, so a wrong LePE cannot hide
        for conv in (m.lepe_global, m.lepe_local):
            if conv is not None:
                torch.nn.init.normal_(conv.weight)
                torch.nn.init.normal_(conv.bias)
    x = torch.randn(batch, hw[0] * hw[1], dim, dtype=torch.float64)
    y = m(x, hw)
    for i in range(batch):
        ref = elfatt_spec(x[i], m, hw, kw.get("global_heads"), kw.get("block_rows"))
        torch.testing.assert_close(y[i], ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("hw", [(4, 3), (6, 5), (8, 8)])
@pytest.mark.parametrize("lepe", [True, False], ids=["lepe", "no_lepe"])
def test_several_heads_default(hw, lepe):
    check(24, 4, hw, lepe=lepe)


@pytest.mark.parametrize("hw", [(4, 3), (5, 2)])
def test_one_head_splits_channels(hw):
    check(8, 1, hw)
    check(7, 1, hw)  # odd width: 3 global channels, 4 local


@pytest.mark.parametrize("g", [0, 1, 2, 3])
def test_explicit_global_heads(g):
    check(18, 3, (6, 4), global_heads=g)


@pytest.mark.parametrize("r", [1, 2, 3, 6])
def test_every_block_rows_divisor(r):
    check(16, 2, (6, 3), block_rows=r)  # r == 6 is block_rows == H: one stripe


def test_default_block_rows_examples():
    assert {H: default_block_rows(H) for H in (7, 12, 14, 28, 32, 56, 64, 192)} == {
        7: 7, 12: 6, 14: 7, 28: 7, 32: 8, 56: 8, 64: 8, 192: 8,
    }


def test_bad_block_rows_names_divisors():
    m = A.create_attention("elfatt", 16, 2, block_rows=4)
    with pytest.raises(ValueError, match=r"block_rows=4 does not divide the grid height H=6; valid block_rows: \[1, 2, 3, 6\]"):
        check_grid(m, (6, 6))


def test_bad_global_heads():
    with pytest.raises(ValueError, match="valid: 0..4"):
        A.create_attention("elfatt", 16, 4, global_heads=5)
    with pytest.raises(ValueError, match="heads=1"):
        A.create_attention("elfatt", 16, 1, global_heads=1)


def test_flops_formula_matches_counter():
    from torch.utils.flop_counter import FlopCounterMode

    m = A.create_attention("elfatt", 24, 4)
    hw = (6, 4)
    q, k, v = (torch.randn(2, 4, 24, 6) for _ in range(3))
    with FlopCounterMode(display=False) as fc:
        # the local branch through SDPA's math path, which the counter sees as matmuls
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.MATH):
            m.attend(q, k, v, hw)
    assert fc.get_total_flops() == m.flops(2, hw, "attend")
