"""vanilla, sdpa and efficient_linear against simple float64 formulas."""
import math

import pytest
import torch

import attentions as A
from refs import reasons_of


def softmax_attention(q, k, v):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    p = torch.exp(s - s.amax(-1, keepdim=True))
    return (p / p.sum(-1, keepdim=True)) @ v


def qkv(B=2, h=3, N=20, d=5, dtype=torch.float64):
    g = torch.Generator().manual_seed(3)
    return [torch.randn(B, h, N, d, generator=g, dtype=dtype) for _ in range(3)]


@pytest.mark.parametrize("name,opts", [("vanilla", {}), ("sdpa", {}), ("sdpa", {"impl": "math"}), ("sdpa", {"impl": "flash"})])
def test_exact_attentions_match_fp64_formula(name, opts):
    q, k, v = qkv()
    m = A.create_attention(name, 15, 3, **opts).double()
    torch.testing.assert_close(m.attend(q, k, v, (4, 5)), softmax_attention(q, k, v), rtol=1e-10, atol=1e-10)


def test_exact_attentions_agree_in_fp32_layer():
    torch.manual_seed(0)
    a = A.create_attention("vanilla", 32, 4)
    b = A.create_attention("sdpa", 32, 4)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 35, 32)
    torch.testing.assert_close(a(x, (5, 7)), b(x, (5, 7)), rtol=1e-5, atol=1e-5)


def test_lepe_adds_depthwise_conv_of_v():
    q, k, v = qkv(B=1, h=2, N=12, d=3)
    m = A.create_attention("vanilla", 6, 2, lepe=True).double()
    hw = (3, 4)
    vmap = v.permute(0, 1, 3, 2).reshape(1, 6, 3, 4)  # channels in head order
    lepe = torch.nn.functional.conv2d(vmap, m.lepe.weight, m.lepe.bias, padding=1, groups=6)
    lepe = lepe.reshape(1, 2, 3, 12).permute(0, 1, 3, 2)
    torch.testing.assert_close(m.attend(q, k, v, hw), softmax_attention(q, k, v) + lepe)


def test_efficient_linear_formula():
    q, k, v = qkv()
    m = A.create_attention("efficient_linear", 15, 3).double()
    qs = torch.exp(q) / torch.exp(q).sum(-1, keepdim=True)  # over channels
    ks = torch.exp(k) / torch.exp(k).sum(-2, keepdim=True)  # over tokens
    torch.testing.assert_close(m.attend(q, k, v, (4, 5)), qs @ (ks.transpose(-2, -1) @ v))


def test_efficient_linear_with_lepe_is_all_global_elfatt():
    torch.manual_seed(0)
    e = A.create_attention("efficient_linear", 12, 2, lepe=True).double()
    f = A.create_attention("elfatt", 12, 2, global_heads=2).double()
    f.qkv.load_state_dict(e.qkv.state_dict())
    f.proj.load_state_dict(e.proj.state_dict())
    f.lepe_global.load_state_dict(e.lepe.state_dict())
    x = torch.randn(2, 20, 12, dtype=torch.float64)
    torch.testing.assert_close(e(x, (4, 5)), f(x, (4, 5)))


def test_sdpa_impl_choices():
    with pytest.raises(ValueError, match="valid impls: auto, flash, efficient, cudnn, math"):
        A.create_attention("sdpa", 16, 2, impl="fast")


def test_sdpa_reasons_on_cpu():
    m = A.create_attention("sdpa", 16, 2, impl="cudnn")
    reasons = reasons_of(m, "unsupported", device=torch.device("cpu"), dtype=torch.float32, hw=(4, 4), batch=1)
    assert reasons and "needs CUDA" in reasons[0]


@pytest.mark.parametrize("name", ["vanilla", "sdpa", "efficient_linear"])
def test_flops_match_counter(name):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    m = A.create_attention(name, 12, 2, lepe=True)
    x = torch.randn(2, 20, 12)
    with FlopCounterMode(display=False) as fc, sdpa_kernel(SDPBackend.MATH):
        m(x, (4, 5))
    assert fc.get_total_flops() == m.flops(2, (4, 5), "full")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["flash", "cudnn", "efficient"])
def test_sdpa_backends_on_gpu(backend):
    q, k, v = (t.cuda().half() for t in qkv(N=64, d=64))
    m = A.create_attention("sdpa", 192, 3, impl=backend).cuda().half()
    out = m.attend(q, k, v, (8, 8))
    ref = softmax_attention(*(t.double() for t in (q, k, v)))
    assert ((out.double() - ref).norm() / ref.norm()) < 1e-2
