"""linear_elu, relu_linear, performer, focused_linear, agent against float64
references written out here (quadratic forms, explicit loops), plus FLOPs."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import attentions as A
from attentions import linear as L

GRIDS = [(7, 7), (14, 7), (6, 4), (10, 6)]


def rand(*shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


def qkv(hw, B=2, h=3, d=8, seed=0, scale=1.0):
    n = hw[0] * hw[1]
    return [rand(B, h, n, d, seed=seed + i, scale=scale) for i in range(3)]


def build(name, dim=24, heads=3, **kw):
    torch.manual_seed(0)
    return A.create_attention(name, dim, heads, **kw).double()


def kernel_ref(fq, fk, v, eps):
    """Quadratic form: out_i = sum_j (fq_i . fk_j) v_j / (sum_j fq_i . fk_j + eps)."""
    a = torch.einsum("bhim,bhjm->bhij", fq, fk)
    return torch.einsum("bhij,bhjd->bhid", a, v) / (a.sum(dim=-1, keepdim=True) + eps)


def dwconv_ref(x, weight, bias):
    """Depthwise k x k conv, zero padding k//2, by shifted sums; x (B, C, H, W), weight (C, 1, k, k)."""
    k = weight.shape[-1]
    H, W = x.shape[-2:]
    xp = F.pad(x, (k // 2,) * 4)
    out = torch.zeros_like(x)
    for a in range(k):
        for b in range(k):
            out += weight[:, 0, a, b].view(1, -1, 1, 1) * xp[:, :, a : a + H, b : b + W]
    return out + bias.view(1, -1, 1, 1)


def head_maps(t, hw):
    """(B, h, N, d) -> (B, h, d, H, W), token index = row * W + col."""
    B, h, N, d = t.shape
    return t.permute(0, 1, 3, 2).reshape(B, h, d, *hw)


def head_tokens(m):
    """(B, h, d, H, W) -> (B, h, N, d)."""
    B, h, d = m.shape[:3]
    return m.reshape(B, h, d, -1).permute(0, 1, 3, 2)


# -- linear_elu, relu_linear -------------------------------------------------
@pytest.mark.parametrize("hw", GRIDS[:3])
def test_linear_elu(hw):
    m = build("linear_elu")
    q, k, v = qkv(hw)
    phi = lambda x: torch.where(x > 0, x + 1, torch.exp(x))  # elu(x) + 1
    torch.testing.assert_close(m.attend(q, k, v, hw), kernel_ref(phi(q), phi(k), v, 1e-6), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("hw", GRIDS[:3])
def test_relu_linear(hw):
    m = build("relu_linear")
    q, k, v = qkv(hw)
    q[0, 0, 3] = -1.0  # a query that relu zeroes entirely: output 0, not NaN
    ref = kernel_ref(q.clamp(min=0), k.clamp(min=0), v, 1e-15)
    out = m.attend(q, k, v, hw)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    assert (out[0, 0, 3] == 0).all()
    half = m.attend(q.bfloat16(), k.bfloat16(), v.bfloat16(), hw)  # computed in float32, returned as bf16
    assert half.dtype == torch.bfloat16 and torch.isfinite(half).all()
    torch.testing.assert_close(half.double(), ref, rtol=0.05, atol=0.05)


# -- performer ---------------------------------------------------------------
def favor_ref(x, w):
    """exp(w.x' - |x'|^2 / 2) / sqrt(m), x' = x d^-1/4, with no stabiliser (float64, small inputs)."""
    x = x * x.shape[-1] ** -0.25
    proj = torch.einsum("bhnd,md->bhnm", x, w)
    return torch.exp(proj - 0.5 * (x * x).sum(-1, keepdim=True)) / math.sqrt(w.shape[0])


@pytest.mark.parametrize("hw", GRIDS[:3])
def test_performer_matches_reference_estimator(hw):
    m = build("performer", num_features=20)  # 20 = 2 full blocks of d=8 + a partial one
    m.eps = 0.0  # the stabilisers then cancel exactly
    q, k, v = qkv(hw)
    w = m.features
    assert w.shape == (20, 8) and w.dtype == torch.float64
    torch.testing.assert_close(m.attend(q, k, v, hw), kernel_ref(favor_ref(q, w), favor_ref(k, w), v, 0.0), rtol=1e-10, atol=1e-12)


def test_performer_stabiliser_survives_large_inputs():
    m = build("performer", num_features=16)
    q, k, v = qkv((7, 7), scale=30.0)  # exponents of several hundred: exp overflows without the shift
    assert torch.isfinite(m.attend(q, k, v, (7, 7))).all()
    assert torch.isfinite(m.float().attend(q.float(), k.float(), v.float(), (7, 7))).all()


def test_performer_features_are_orthogonal_seeded_and_chi_scaled():
    d, m = 8, 20
    w = L.orthogonal_gaussian_features(m, d, seed=3)
    assert torch.equal(w, L.orthogonal_gaussian_features(m, d, seed=3))
    assert not torch.allclose(w, L.orthogonal_gaussian_features(m, d, seed=4))
    for block in (w[:8], w[8:16], w[16:]):  # orthogonal rows within a block
        gram = block @ block.T
        torch.testing.assert_close(gram - torch.diag(torch.diagonal(gram)), torch.zeros_like(gram), rtol=0, atol=1e-12)
    # norms are chi(d) draws: over many rows their mean approaches E[chi_8] = sqrt(2) G(4.5)/G(4)
    norms = L.orthogonal_gaussian_features(4000, d, seed=0).norm(dim=1)
    chi_mean = math.sqrt(2) * math.gamma(4.5) / math.gamma(4)
    assert abs(norms.mean().item() - chi_mean) < 0.05
    # fixed at construction, stored with the weights
    a, b = build("performer", feature_seed=5), build("performer", feature_seed=5)
    assert torch.equal(a.features, b.features) and "features" in a.state_dict()


def test_performer_approaches_softmax_with_many_features():
    hw = (4, 4)
    q, k, v = qkv(hw, B=1, h=2, scale=0.5)
    exact = (q @ k.transpose(-2, -1) / math.sqrt(8)).softmax(-1) @ v
    errs = {}
    for m_feat in (16, 8192):
        m = build("performer", heads=2, dim=16, num_features=m_feat, feature_seed=0)
        errs[m_feat] = (m.attend(q, k, v, hw) - exact).abs().max().item()
    assert errs[8192] < 0.03, errs
    assert errs[8192] < errs[16], errs


# -- focused_linear ----------------------------------------------------------
@pytest.mark.parametrize("hw", GRIDS)
@pytest.mark.parametrize("p,ks", [(3, 5), (2.5, 3)])
def test_focused_linear(hw, p, ks):
    m = build("focused_linear", focusing_factor=p, kernel_size=ks)
    with torch.no_grad():
        m.scale.copy_(rand(24, seed=9))  # a non-trivial learned scale
    q, k, v = qkv(hw)
    s = torch.log1p(torch.exp(m.scale)).view(3, 1, 8)  # softplus, per channel of each head

    def phi(x):
        x = (x.clamp(min=0) + 1e-6) / s
        xp = x**p
        return xp / torch.sqrt((xp * xp).sum(-1, keepdim=True)) * torch.sqrt((x * x).sum(-1, keepdim=True))

    B, h, N, d = v.shape
    conv = dwconv_ref(head_maps(v, hw).reshape(B * h, d, *hw), m.dwc.weight, m.dwc.bias)  # one conv per head image
    ref = kernel_ref(phi(q), phi(k), v, 1e-6) + head_tokens(conv.reshape(B, h, d, *hw))
    torch.testing.assert_close(m.attend(q, k, v, hw), ref, rtol=1e-11, atol=1e-12)


def test_focused_linear_options():
    with pytest.raises(ValueError, match=r"kernel_size=4 is invalid; valid: an odd positive integer"):
        build("focused_linear", kernel_size=4)
    with pytest.raises(ValueError, match=r"focusing_factor=0 is invalid; valid: a number > 0"):
        build("focused_linear", focusing_factor=0)


# -- agent -------------------------------------------------------------------
def adaptive_pool_ref(x, out_hw):
    """Average over windows [floor(i*H/p), ceil((i+1)*H/p)); x (..., H, W)."""
    H, W = x.shape[-2:]
    rows = []
    for i in range(out_hw[0]):
        r0, r1 = (i * H) // out_hw[0], -((-(i + 1) * H) // out_hw[0])
        cols = []
        for j in range(out_hw[1]):
            c0, c1 = (j * W) // out_hw[1], -((-(j + 1) * W) // out_hw[1])
            cols.append(x[..., r0:r1, c0:c1].mean(dim=(-2, -1)))
        rows.append(torch.stack(cols, -1))
    return torch.stack(rows, -2)


def softmax_ref(s):
    e = torch.exp(s - s.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


@pytest.mark.parametrize("hw,agents,n", [((7, 7), 49, 49), ((14, 7), 49, 49), ((6, 4), 49, 24), ((10, 6), 49, 42), ((14, 7), 16, 16)])
def test_agent(hw, agents, n):
    m = build("agent", agent_num=agents)
    q, k, v = qkv(hw)
    B, h, N, d = q.shape
    p = math.isqrt(agents)
    a = head_tokens(adaptive_pool_ref(head_maps(q, hw), (min(p, hw[0]), min(p, hw[1]))))  # (B, h, n, d)
    assert a.shape[2] == n
    agent_v = softmax_ref(a @ k.transpose(-2, -1) / math.sqrt(d)) @ v
    out = softmax_ref(q @ a.transpose(-2, -1) / math.sqrt(d)) @ agent_v
    conv = dwconv_ref(head_maps(v, hw).reshape(B, h * d, *hw), m.dwc.weight, m.dwc.bias)  # channel = head*d + j
    ref = out + head_tokens(conv.reshape(B, h, d, *hw))
    torch.testing.assert_close(m.attend(q, k, v, hw), ref, rtol=1e-11, atol=1e-12)


def test_agent_num_must_be_square():
    with pytest.raises(ValueError, match=r"agent_num=50 is invalid; valid: a perfect square \(1, 4, 9"):
        build("agent", agent_num=50)


# -- FLOPs: analytic == FlopCounterMode (only matmuls and convs are counted) ----------
CASES = [
    ("linear_elu", {}),
    ("linear_elu", {"lepe": True}),
    ("relu_linear", {}),
    ("performer", {}),
    ("performer", {"num_features": 20, "lepe": True}),
    ("focused_linear", {}),
    ("focused_linear", {"kernel_size": 3}),
    ("agent", {}),
    ("agent", {"agent_num": 16}),
]


@pytest.mark.parametrize("name,kw", CASES, ids=lambda c: str(c))
@pytest.mark.parametrize("hw", GRIDS, ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_flops_match_flop_counter(name, kw, hw):
    m = build(name, **kw)
    q, k, v = qkv(hw)
    with FlopCounterMode(display=False) as counter:
        m.attend(q, k, v, hw)
    assert counter.get_total_flops() == m.flops(2, hw, "attend")


def test_flop_formulas():
    """The docstring formulas, written out (B=2, h=3, d=8, C=24, N=49)."""
    B, h, d, C, N = 2, 3, 8, 24, 49
    kern = B * h * (4 * N * d * d + 2 * N * d)
    assert build("linear_elu").flops(B, (7, 7), "attend") == kern
    assert build("relu_linear").flops(B, (7, 7), "attend") == kern
    assert build("performer").flops(B, (7, 7), "attend") == B * h * (8 * N * 256 * d + 2 * N * 256)
    assert build("focused_linear").flops(B, (7, 7), "attend") == kern + 2 * 25 * B * C * N
    assert build("agent").flops(B, (7, 7), "attend") == 8 * B * h * N * 49 * d + 18 * B * C * N
