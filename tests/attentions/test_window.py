"""swin, cswin, neighborhood against dense masked softmax attention in float64.

Every reference mask is built here with plain loops over token coordinates
(row, col) = divmod(index, W); none of attentions/window.py's helpers is used.
"""
import math
import time

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import attentions as A
from refs import check_grid, reasons_of
from attentions.window import swin_window_shift

F64 = torch.float64


def qkv(hw, heads=2, d=4, batch=2, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = hw[0] * hw[1]
    return [torch.randn(batch, heads, n, d, generator=g, dtype=dtype) for _ in range(3)]


def masked_attention(q, k, v, allowed):
    """softmax(q k^T / sqrt(d)) v with disallowed pairs removed; allowed (N, N) bool."""
    s = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    return s.masked_fill(~allowed, float("-inf")).softmax(dim=-1) @ v


def pair_mask(hw, same):
    """(N, N) bool: allowed[i, j] = same((ri, ci), (rj, cj))."""
    H, W = hw
    n = H * W
    m = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        for j in range(n):
            m[i, j] = same(divmod(i, W), divmod(j, W))
    return m


def build(name, heads=2, d=4, **kw):
    torch.manual_seed(0)
    return A.create_attention(name, heads * d, heads, **kw).to(F64)


# -- swin ----------------------------------------------------------------------
def swin_reference_mask(hw, w, s):
    # A shifted window is the window grid moved by s, without wrap-around:
    # tokens share a window iff floor((coord - s) / w) agrees on both axes.
    # Only real tokens exist here, so padding is "masked" by construction.
    return pair_mask(hw, lambda a, b: (a[0] - s) // w == (b[0] - s) // w and (a[1] - s) // w == (b[1] - s) // w)


@pytest.mark.parametrize(
    "hw,window,shift",
    [
        ((8, 8), 4, False),
        ((8, 8), 4, True),
        ((9, 12), 3, True),  # non-square, divides
        ((10, 9), 4, False),  # padded to 12 x 12
        ((10, 9), 4, True),  # padded and shifted
        ((11, 13), 5, True),  # padded, shift 2
        ((6, 4), 7, False),  # Swin's rule: one window of min(H, W) = 4, H padded to 8
    ],
)
def test_swin_equals_masked_attention(hw, window, shift):
    m = build("swin", window=window, shift=shift)
    w, s = swin_window_shift(hw, window, shift)
    q, k, v = qkv(hw)
    out = m.attend(q, k, v, hw)
    ref = masked_attention(q, k, v, swin_reference_mask(hw, w, s))
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    assert m.run_info() == {"impl_ran": "torch", "window_effective": str(w), "shift_effective": str(s)}


def test_swin_rule_small_grids():
    # min(H, W) <= window: one window of min(H, W), never shifted (Swin's BasicLayer rule)
    assert swin_window_shift((7, 7), 7, True) == (7, 0)
    assert swin_window_shift((14, 7), 7, True) == (7, 0)
    assert swin_window_shift((6, 4), 7, False) == (4, 0)
    assert swin_window_shift((16, 16), 7, True) == (7, 3)
    m = build("swin", shift=True)
    q, k, v = qkv((7, 7))
    full = masked_attention(q, k, v, torch.ones(49, 49, dtype=torch.bool))
    torch.testing.assert_close(m.attend(q, k, v, (7, 7)), full, rtol=1e-10, atol=1e-10)


def test_swin_padded_shifted_backward_is_finite():
    # padded queries whose region holds only padded keys must not produce NaN grads
    m = build("swin", window=4, shift=True)
    q, k, v = (t.requires_grad_() for t in qkv((10, 9)))
    m.attend(q, k, v, (10, 9)).square().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


# -- cswin ---------------------------------------------------------------------
def stripe_lepe_reference(conv, vb, hw, same):
    """Depthwise 3x3 conv on v's channels, neighbours outside the token's stripe count as zero."""
    B, h, n, d = vb.shape
    H, W = hw
    vc = vb.permute(0, 2, 1, 3).reshape(B, n, h * d)
    out = conv.bias.expand(B, n, h * d).clone()
    for i in range(n):
        r, c = divmod(i, W)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                rr, cc = r + dy, c + dx
                if 0 <= rr < H and 0 <= cc < W and same((r, c), (rr, cc)):
                    out[:, i] += conv.weight[:, 0, dy + 1, dx + 1] * vc[:, rr * W + cc]
    return out.reshape(B, n, h, d).permute(0, 2, 1, 3)


def cswin_reference(m, q, k, v, hw, s):
    vert = lambda a, b: a[1] // s == b[1] // s  # noqa: E731  same column stripe (full height)
    horiz = lambda a, b: a[0] // s == b[0] // s  # noqa: E731  same row stripe (full width)
    if m.num_heads == 1:
        c = m.head_dim // 2
        split = lambda t: (t[..., :c], t[..., c:])  # noqa: E731
    else:
        g = m.num_heads // 2
        split = lambda t: (t[:, :g], t[:, g:])  # noqa: E731
    (qv, qh), (kv, kh), (vv, vh) = split(q), split(k), split(v)
    outv = masked_attention(qv, kv, vv, pair_mask(hw, vert)) + stripe_lepe_reference(m.lepe_vertical, vv, hw, vert)
    outh = masked_attention(qh, kh, vh, pair_mask(hw, horiz)) + stripe_lepe_reference(m.lepe_horizontal, vh, hw, horiz)
    return torch.cat([outv, outh], dim=-1 if m.num_heads == 1 else 1)


@pytest.mark.parametrize(
    "hw,stripe,heads,d",
    [
        ((7, 7), 7, 2, 4),  # one stripe each way: full attention + LePE
        ((14, 7), 7, 2, 4),
        ((6, 4), 2, 2, 4),
        ((6, 4), 1, 4, 2),
        ((12, 8), 4, 3, 4),  # odd heads: 1 vertical, 2 horizontal
        ((8, 12), 2, 2, 4),
        ((6, 9), 3, 1, 6),  # one head split by channels 3 / 3
        ((4, 6), 2, 1, 5),  # one head split by channels 2 / 3
    ],
)
def test_cswin_equals_masked_attention_plus_stripe_lepe(hw, stripe, heads, d):
    m = build("cswin", heads=heads, d=d, stripe=stripe)
    with torch.no_grad():  # random LePE weights and biases, not the init
        for p in m.parameters():
            p.normal_()
    q, k, v = qkv(hw, heads=heads, d=d)
    with torch.no_grad():
        ref = cswin_reference(m, q, k, v, hw, stripe)
        out = m.attend(q, k, v, hw)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_cswin_bad_stripe_names_valid_ones():
    m = build("cswin", stripe=3)
    with pytest.raises(ValueError, match=r"stripe=3 .*\(H, W\)=\(6, 4\).*valid stripes for this grid: \[1, 2\]"):
        check_grid(m, (6, 4))
    check_grid(build("cswin"), (7, 7))
    check_grid(build("cswin"), (14, 7))
    with pytest.raises(ValueError, match="stripe=0"):
        build("cswin", stripe=0)
    with pytest.raises(ValueError, match="heads=1 .*head width >= 2"):
        A.create_attention("cswin", 1, 1)


# -- neighborhood ----------------------------------------------------------------
def natten_reference_mask(hw, kernel):
    H, W = hw

    def start(x, size):  # NATTEN: centre the window, then shift it inside the grid
        s = x - kernel // 2
        if s < 0:
            s = 0
        if s + kernel > size:
            s = size - kernel
        return s

    def same(a, b):
        r0, c0 = start(a[0], H), start(a[1], W)
        return r0 <= b[0] < r0 + kernel and c0 <= b[1] < c0 + kernel

    return pair_mask(hw, same)


@pytest.mark.parametrize("kernel", [3, 5, 7])
@pytest.mark.parametrize("hw", [(7, 7), (9, 8), (8, 11)], ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_neighborhood_mask_impl(kernel, hw):
    allowed = natten_reference_mask(hw, kernel)
    assert (allowed.sum(-1) == kernel * kernel).all()  # border queries see k*k keys too
    m = build("neighborhood", kernel=kernel, impl="mask")
    q, k, v = qkv(hw)
    torch.testing.assert_close(m.attend(q, k, v, hw), masked_attention(q, k, v, allowed), rtol=1e-10, atol=1e-10)
    assert m.run_info()["impl_ran"].startswith("mask")


@pytest.mark.parametrize("kernel,hw", [(3, (7, 7)), (5, (9, 8)), (7, (8, 11))])
def test_neighborhood_flex_eager_float64(kernel, hw):
    m = build("neighborhood", kernel=kernel, impl="flex")
    q, k, v = qkv(hw)
    with torch.no_grad():  # FlexAttention has no CPU backward
        out = m.attend(q, k, v, hw)
    torch.testing.assert_close(out, masked_attention(q, k, v, natten_reference_mask(hw, kernel)), rtol=1e-10, atol=1e-10)
    assert "eager" in m.run_info()["impl_ran"]


def test_neighborhood_border_uses_shifted_window():
    # corner (0, 0), k=3: NATTEN's window is rows 0-2, cols 0-2 (not the clipped 2x2)
    hw = (6, 6)
    m = build("neighborhood", kernel=3, impl="mask")
    q, k, v = qkv(hw)
    base = m.attend(q, k, v, hw)[..., 0, :]
    for (r, c), inside in [((2, 2), True), ((1, 1), True), ((3, 0), False), ((0, 3), False)]:
        v2 = v.clone()
        v2[:, :, r * 6 + c] += 1.0
        changed = not torch.equal(m.attend(q, k, v2, hw)[..., 0, :], base)
        assert changed == inside, (r, c)


def test_neighborhood_flex_compiled_two_kernel_sizes_in_one_process():
    """The compiled test: torch.compile(flex_attention) on CPU (float32), kernel 5
    then kernel 3 in the same process (the second shape-generic compile used
    to fail in inductor's C++ build), each against the float64 mask reference.
    The grid has 256 tokens: compiled CPU flex is refused where N is not a
    multiple of 64 (see the next test)."""
    hw = (16, 16)
    q, k, v = qkv(hw, d=16)
    for kernel in (5, 3):
        m = build("neighborhood", kernel=kernel, impl="flex").float()
        t0 = time.perf_counter()
        with torch.no_grad():
            try:
                out = m.attend(q.float(), k.float(), v.float(), hw)
            except A.Unsupported as e:
                pytest.skip(f"compiled FlexAttention unusable here: {e}")
        print(f"compiled flex, kernel {kernel}: first call {time.perf_counter() - t0:.1f} s")
        assert "compile" in m.run_info()["impl_ran"]
        ref = masked_attention(q, k, v, natten_reference_mask(hw, kernel))
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_compiled_cpu_flex_refuses_lengths_where_it_erred():
    m = build("neighborhood", kernel=5, impl="flex").float()
    reasons = reasons_of(m, "unsupported", device=torch.device("cpu"), dtype=torch.float32, hw=(9, 8), batch=1)
    assert len(reasons) == 1 and "not multiples of 64 (N=72 here)" in reasons[0]
    q, k, v = qkv((9, 8), d=16)
    with torch.no_grad(), pytest.raises(A.Unsupported, match="N=72"):
        m.attend(q.float(), k.float(), v.float(), (9, 8))
    assert reasons_of(m, "unsupported", device=torch.device("cpu"), dtype=torch.float64, hw=(9, 8), batch=1) == []  # eager


def test_neighborhood_errors_name_valid_values():
    msg = r"kernel=9 is larger than the grid \(H, W\)=\(7, 8\); valid kernels for this grid: \[1, 3, 5, 7\]"
    with pytest.raises(ValueError, match=msg):
        check_grid(build("neighborhood", kernel=9), (7, 8))
    with pytest.raises(ValueError, match=r"kernel=7 .*\(H, W\)=\(9, 6\).*\[1, 3, 5\]"):
        check_grid(build("neighborhood"), (9, 6))
    with pytest.raises(ValueError, match=r"kernel=4 must be odd; valid kernels: odd integers"):
        build("neighborhood", kernel=4)
    with pytest.raises(ValueError, match=r"valid impls: auto, flex, mask, natten"):
        build("neighborhood", impl="cuda")
    with pytest.raises(ValueError, match=r"window=0 .*valid windows"):
        build("swin", window=0)
    m = build("neighborhood", impl="flex")
    q, k, v = (t.requires_grad_() for t in qkv((7, 7)))
    with pytest.raises(A.Unsupported, match="no backward on CPU"):
        m.attend(q, k, v, (7, 7))


def test_neighborhood_auto_is_mask_on_cpu():
    m = build("neighborhood")
    q, k, v = qkv((7, 7))
    m.attend(q, k, v, (7, 7))
    assert m.run_info()["impl_ran"].startswith("mask")
    assert m.flops(2, (7, 7), "attend") == 4 * 2 * 2 * 49 * 49 * 4  # k = 7 = grid: every key


# -- FLOPs -----------------------------------------------------------------------
def counted_flops(fn):
    # The math backend decomposes SDPA into matmuls the counter can see; the
    # fused CPU kernel would count as 0.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


@pytest.mark.parametrize(
    "name,kw,hw,heads,d",
    [
        ("swin", dict(window=4, shift=True), (10, 9), 2, 4),  # padded: 12x12 counted
        ("swin", dict(), (14, 7), 4, 8),
        ("cswin", dict(stripe=4), (12, 8), 4, 4),
        ("cswin", dict(stripe=2), (6, 4), 3, 4),
        ("cswin", dict(stripe=3), (6, 9), 1, 5),
    ],
)
def test_flops_match_flop_counter(name, kw, hw, heads, d):
    m = build(name, heads=heads, d=d, **kw)
    q, k, v = qkv(hw, heads=heads, d=d)
    with torch.no_grad():
        assert counted_flops(lambda: m.attend(q, k, v, hw)) == m.flops(2, hw, "attend")
        x = torch.randn(2, hw[0] * hw[1], heads * d, dtype=F64)
        assert counted_flops(lambda: m(x, hw)) == m.flops(2, hw, "full")


def test_neighborhood_natten_matches_the_mask_reference():
    """impl=natten: NATTEN's na2d, where the package is installed (its Flex backend runs on the CPU)."""
    m = build("neighborhood", kernel=5, impl="natten").float()
    missing = reasons_of(m, "unavailable", torch.device("cpu"))
    if missing:
        pytest.skip(f"natten unavailable here: {missing[0]}")
    q, k, v = qkv((9, 8), d=16)
    with torch.no_grad():
        out = m.attend(q.float(), k.float(), v.float(), (9, 8))
    ref = masked_attention(q, k, v, natten_reference_mask((9, 8), 5))
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    assert m.run_info()["impl_ran"].startswith("natten ")


def test_neighborhood_natten_missing_is_unavailable(monkeypatch):
    import sys

    from attentions.packages import import_problem

    import_problem.cache_clear()
    monkeypatch.setitem(sys.modules, "natten", None)
    monkeypatch.setitem(sys.modules, "natten.functional", None)
    try:
        m = build("neighborhood", kernel=5, impl="natten")
        (reason,) = reasons_of(m, "unavailable", torch.device("cpu"))
        assert "is not installed" in reason and "impl=natten needs the natten package" in reason
        with pytest.raises(A.Unavailable):
            m.attend(*qkv((9, 8), d=16), (9, 8))
    finally:
        import_problem.cache_clear()
