"""ELFATT's fast path (attentions/kernels) computes the reference function.

On CPU the Triton kernels run in Triton's interpreter: the ``interp``
fixture sets TRITON_INTERPRET=1 for one test only, and the kernels module is
reloaded whenever that setting differs from the one it was imported under
(``@triton.jit`` reads it at decoration time), so test order does not matter.
triton is imported before the variable is ever set (see ``interp``).
The reference is the plain-PyTorch module in float64 on the same weights.
"""
from __future__ import annotations

import importlib.util
import sys
import types

import pytest
import torch

import attentions as A
from attentions.kernels import elfatt_fast

HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (pip install triton==3.6.0)")


@pytest.fixture
def interp(monkeypatch):
    """Run Triton kernels in the CPU interpreter, with NaN-poisoned outputs.

    triton itself is imported first, with the variable unset, so its own
    library stays compiled-mode for the compiled tests in this process (our
    kernels use none of its @jit functions, see elfatt_triton.py)."""
    import triton  # noqa: F401

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(elfatt_fast, "POISON", True)


def pair(dim, heads, device="cpu", dtype=torch.float32, opts=None, seed=0, **kw):
    """(fast module, float64 reference module) with the same random weights."""
    torch.manual_seed(seed)
    fast = A.create_attention("elfatt", dim, heads, impl="fast", tuning=opts, **kw).to(device, dtype)
    with torch.no_grad():  # every weight random, LePE biases included (default init keeps them tiny)
        for p in fast.parameters():
            p.normal_(0, p.shape[1] ** -0.5 if p.dim() == 2 else 0.5)
    ref = A.create_attention("elfatt", dim, heads, impl="reference", **kw).double()
    ref.load_state_dict({k: v.double().cpu() for k, v in fast.state_dict().items()})
    return fast, ref


def rel_err(out, ref):
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    assert not torch.isnan(out).any(), "NaN in output: an element was not written"
    return ((out - ref).norm() / ref.norm()).item()


def check_layer(dim, heads, hw, batch, dtype=torch.float32, tol=1e-5, device="cpu", opts=None, **kw):
    """Whole layer: the attention sees permuted views of qkv (token stride 3C)."""
    fast, ref = pair(dim, heads, device, dtype, opts, **kw)
    x = torch.randn(batch, hw[0] * hw[1], dim, device=device) * 2
    with torch.no_grad():
        y = fast(x.to(dtype), hw)
        y_ref = ref(x.double().cpu(), hw)
    assert y.dtype == dtype and fast.run_info()["impl_ran"] == "fast"
    assert rel_err(y, y_ref) < tol
    return fast


# (dim, heads, hw, batch, kw, opts): non-square grids, one head (channel split,
# odd halves too), odd head counts, every global_heads extreme, multi-stripe.
CASES = [
    (32, 4, (6, 5), 2, {}, {}),
    (24, 3, (5, 7), 1, {"block_rows": 1}, {}),
    (16, 1, (4, 9), 2, {}, {}),  # one head: 8 global + 8 local channels
    (10, 1, (3, 5), 1, {}, {}),  # one head, d=10: 5 + 5, widths not a power of two
    (9, 1, (4, 3), 1, {"block_rows": 2}, {}),  # odd split: 4 global, 5 local
    (40, 5, (4, 6), 1, {"global_heads": 1}, {}),
    (32, 4, (6, 4), 2, {"global_heads": 0}, {}),  # local only
    (32, 4, (6, 4), 1, {"global_heads": 4}, {"global_splits": 3, "ctx_bn": 16}),  # global only, 2 splits
    (48, 2, (8, 6), 1, {"block_rows": 2}, {"stripe_bm": 16, "stripe_bn": 16}),  # several tiles per stripe
]


@needs_triton
@pytest.mark.parametrize("dim,heads,hw,batch,kw,opts", CASES)
def test_layer_matches_reference(interp, dim, heads, hw, batch, kw, opts):
    check_layer(dim, heads, hw, batch, opts=opts, **kw)


@needs_triton
@pytest.mark.parametrize("block_rows", [1, 2, 3, 6])
def test_every_block_rows(interp, block_rows):
    check_layer(32, 4, (6, 5), 1, block_rows=block_rows)


@needs_triton
@pytest.mark.parametrize("layout", ["contiguous", "layer"])
def test_sdpa_local_path(interp, layout):
    """The SDPA local variant reads both blocked layouts (form A and B) uncopied."""
    if layout == "layer":
        check_layer(32, 4, (6, 4), 2, block_rows=2, opts={"local": "sdpa"})
        return
    fast, ref = pair(32, 4, opts={"local": "sdpa"}, block_rows=3)
    q, k, v = (torch.randn(2, 4, 24, 8) for _ in range(3))
    out = fast.attend(q, k, v, (6, 4))
    assert "A view" in fast.run_info()["local"]
    assert rel_err(out, ref.attend(q.double(), k.double(), v.double(), (6, 4))) < 1e-5


@needs_triton
def test_splits_deterministic_and_strided_inputs(interp):
    """Split global context (3 splits): bitwise repeatable; inputs with a non-unit
    channel stride and random token strides give the same function."""
    fast, ref = pair(32, 4, opts={"global_splits": 3, "ctx_bn": 16}, block_rows=2)
    base = torch.randn(3, 2, 8, 48, 4)  # (qkv, B, d, N, h): every stride unusual
    q, k, v = base.permute(0, 1, 4, 3, 2).unbind(0)  # (B, h, N, d), channel stride 48*4
    o1 = fast.attend(q, k, v, (6, 8))
    assert "splits=3" in fast.run_info()["global"]
    o2 = fast.attend(q, k, v, (6, 8))
    assert torch.equal(o1, o2)
    assert rel_err(o1, ref.attend(q.double(), k.double(), v.double(), (6, 8))) < 1e-5


@needs_triton
def test_float16_in_interpreter(interp):
    check_layer(32, 4, (6, 5), 2, dtype=torch.float16, tol=1e-2, block_rows=3)


@needs_triton
def test_backward_matches_reference(interp):
    """Gradients (input, qkv, LePE weights) equal the reference's (recomputed through it)."""
    fast, ref = pair(24, 3, block_rows=2)
    x = torch.randn(2, 24, 24)
    xf, xr = x.clone().requires_grad_(), x.double().requires_grad_()
    gy = torch.randn(2, 24, 24)
    (fast(xf, (4, 6)) * gy).sum().backward()
    (ref(xr, (4, 6)) * gy.double()).sum().backward()
    assert rel_err(xf.grad, xr.grad) < 1e-5
    for (name, p), pr in zip(fast.named_parameters(), ref.parameters()):
        assert p.grad is not None, name
        assert rel_err(p.grad, pr.grad) < 1e-5, name


@needs_triton
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_kernels_compile_for_hopper(dtype, monkeypatch):
    """Every launch of ViT-B/16 cases (224 px batch 256; 1024, 2048, 3072 px batch 1)
    at the default and the tuning variants compiles for sm_90 with no spills, every
    launch holding a tensor-core role to wgmma. In a fresh process, so
    TRITON_INTERPRET in this one (set here on purpose, as a whole interpreted test
    run would) cannot change the outcome."""
    import sm90

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    built = sm90.run_isolated("forward", dtype)
    if isinstance(built, str):
        if "ptxas" in built.lower() or "cuobjdump" in built.lower():
            pytest.skip(f"cannot compile for sm_90 here: {built}")
        pytest.fail(built)
    assert {b["kernel"] for b in built} == {"global_context_kernel", "global_combine_kernel", "global_out_kernel",
                                             "stripe_attn_kernel", "stripe_epilogue_kernel"}
    assert any(b["roles"] == ["global_combine", "stripe_attn"] for b in built)  # the combine inside the stripes
    for b in built:
        assert b["wgmma"] == bool(set(b["roles"]) & sm90.DOT_ROLES), b
    if any(b["stack"] is None for b in built):
        pytest.skip("triton's cuobjdump is missing here: register spills not checked (wgmma was)")
    for b in built:
        assert b["stack"] == 0, f"{b} spills"


@needs_triton
def test_amp_backward_matches_reference(interp):
    """Mixed-precision training through the fast path: fp32 weights, fp16 autocast;
    the backward recomputes under the forward's autocast state (input, qkv and
    LePE gradients against the float64 reference)."""
    fast, ref = pair(24, 3, block_rows=2)
    x = torch.randn(2, 24, 24)
    xf, xr = x.clone().requires_grad_(), x.double().requires_grad_()
    gy = torch.randn(2, 24, 24)
    with torch.autocast("cpu", dtype=torch.float16):
        y = fast(xf, (4, 6))
    assert y.dtype == torch.float16 and fast.run_info()["impl_ran"] == "fast"
    (y.float() * gy).sum().backward()
    (ref(xr, (4, 6)) * gy.double()).sum().backward()
    assert rel_err(xf.grad, xr.grad) < 2e-2
    for (name, p), pr in zip(fast.named_parameters(), ref.parameters()):
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        assert rel_err(p.grad, pr.grad) < 2e-2, name


def test_fast_on_cpu_without_interpreter_is_unsupported(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    m = A.create_attention("elfatt", 32, 4, impl="fast")
    reasons = m.unsupported_reasons(device=torch.device("cpu"), dtype=torch.float32, hw=(4, 4), batch=1)
    assert reasons and "CUDA" in reasons[0]
    with pytest.raises(A.Unsupported, match="device is cpu"):
        m(torch.randn(1, 16, 32), (4, 4))
    float64 = m.unsupported_reasons(device=torch.device("cuda"), dtype=torch.float64, hw=(4, 4), batch=1)
    assert any("float64" in r for r in float64)


def test_auto_is_reference_on_cpu(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # even when the interpreter could run it
    m = A.create_attention("elfatt", 32, 4)
    assert m.impl == "auto"
    m(torch.randn(1, 16, 32), (4, 4))
    assert m.run_info()["impl_ran"] == "reference"


def test_missing_triton_is_unavailable(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setitem(sys.modules, "triton", None)  # import triton -> ImportError
    monkeypatch.delitem(sys.modules, "attentions.kernels.elfatt_triton", raising=False)
    monkeypatch.delattr(A.kernels, "elfatt_triton", raising=False)
    assert "triton" in A.kernels.triton_missing()
    m = A.create_attention("elfatt", 32, 4, impl="fast")
    with pytest.raises(A.Unavailable, match="needs triton"):
        m(torch.randn(1, 16, 32), (4, 4))


def test_bad_impl_and_tuning_are_refused_at_construction():
    with pytest.raises(ValueError, match="valid impls: auto, reference, fast"):
        A.create_attention("elfatt", 32, 4, impl="triton")
    with pytest.raises(ValueError, match=r"unknown ELFATT tuning option\(s\) \['bogus'\]; valid: local, sdpa_impl"):
        A.create_attention("elfatt", 32, 4, tuning={"stripe_bm": 16, "bogus": 1})
    with pytest.raises(ValueError, match="tuning.stripe_bm=0; valid: a positive integer"):
        A.create_attention("elfatt", 32, 4, tuning={"stripe_bm": 0})
    with pytest.raises(ValueError, match="tuning.local='cuda'; valid: triton, sdpa"):
        A.create_attention("elfatt", 32, 4, tuning={"local": "cuda"})
    assert A.create_attention("elfatt", 32, 4, tuning={"stripe_stages": 3}).tuning.as_dict() == {"stripe_stages": 3}


def test_auto_sends_fp32_to_the_reference(monkeypatch):
    """fp32 spills on sm_90, so impl=auto keeps it on the reference; fp16/bf16 take the fast path."""
    m = A.create_attention("elfatt", 32, 4)
    monkeypatch.setattr(A.elfatt, "triton_missing", lambda: "")
    monkeypatch.setattr(m, "_fast_reasons", lambda device, dtype: [])
    cuda_like = types.SimpleNamespace(is_cuda=True, dtype=torch.float32, device=torch.device("cpu"))
    assert not m._use_fast(cuda_like)
    for dtype in (torch.float16, torch.bfloat16):
        assert m._use_fast(types.SimpleNamespace(is_cuda=True, dtype=dtype, device=torch.device("cpu")))


# -- real GPU -------------------------------------------------------------
GPU_CASES = [  # (dim, heads, hw, batch, kw): ViT-B-like and odd ones
    (768, 12, (14, 14), 4, {}),
    (768, 12, (32, 24), 1, {}),
    (384, 6, (16, 16), 2, {"global_heads": 1, "block_rows": 4}),
    (64, 1, (12, 10), 2, {}),
    (96, 3, (9, 7), 3, {"block_rows": 3}),
]


@pytest.mark.gpu
@needs_triton
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-2), (torch.bfloat16, 1e-2), (torch.float32, 1e-5)],
                         ids=["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("dim,heads,hw,batch,kw", GPU_CASES)
def test_gpu_layer_matches_reference(monkeypatch, dtype, tol, dim, heads, hw, batch, kw):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(elfatt_fast, "POISON", True)
    check_layer(dim, heads, hw, batch, dtype=dtype, tol=tol, device="cuda", **kw)


@pytest.mark.gpu
@needs_triton
@pytest.mark.parametrize("dim,heads,hw,batch,kw", GPU_CASES)
def test_gpu_sdpa_local_path(monkeypatch, dim, heads, hw, batch, kw):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(elfatt_fast, "POISON", True)
    check_layer(dim, heads, hw, batch, dtype=torch.float16, tol=1e-2, device="cuda", opts={"local": "sdpa"}, **kw)


@pytest.mark.gpu
@needs_triton
def test_gpu_auto_is_fast_and_backward(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    fast, ref = pair(192, 3, device="cuda", dtype=torch.float16)  # auto sends fp32 to the reference
    fast.impl = "auto"
    x = torch.randn(2, 12 * 8, 192)
    xf, xr = x.cuda().half().requires_grad_(), x.double().requires_grad_()
    fast(xf, (12, 8)).float().square().sum().backward()
    ref(xr, (12, 8)).square().sum().backward()
    assert fast.run_info()["impl_ran"] == "fast"
    assert rel_err(xf.grad, xr.grad) < 1e-2
