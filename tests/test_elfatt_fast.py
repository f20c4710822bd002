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
    fast = A.create_attention("elfatt", dim, heads, impl="fast", **kw).to(device, dtype)
    with torch.no_grad():  # every weight random, LePE biases included (default init keeps them tiny)
        for p in fast.parameters():
            p.normal_(0, p.shape[1] ** -0.5 if p.dim() == 2 else 0.5)
    fast.fast_options = opts or {}
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


def sm90_compile(kernel, ptr: str, consts: dict, warps: int, stages: int = 2):
    """Compile a kernel ahead of time for an H100 (sm_90): no GPU needed, and
    it catches what the interpreter does not (types, layouts, codegen). Pointer
    and stride arguments get the 16-divisibility the JIT sees at run time."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig, attrs = {}, {}
    for i, name in enumerate(kernel.arg_names):
        if name in consts:
            sig[name] = "constexpr"
            continue
        sig[name] = "*fp32" if name == "ws_ptr" else ptr if name.endswith("_ptr") else "fp32" if name == "qk_scale" else "i32"
        if name.endswith("_ptr") or name.startswith("s_"):
            attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=kernel, signature=sig, constexprs=consts, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": stages})


def stack_bytes(compiled) -> int | None:
    """Per-thread stack (spills) of a compiled kernel, read with triton's cuobjdump."""
    import os
    import subprocess
    import tempfile

    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    return int(usage.split("STACK:")[1].split()[0])


@needs_triton
def test_kernels_compile_for_hopper(monkeypatch):
    """The default fp16 configs compile for sm_90 to wgmma with no spills."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    kt = elfatt_fast.load_kernels()
    d = {"WIDTH": 64, "BD": 64}
    mma = dict(d, DOT_PREC="tf32")
    builds = [
        (kt.global_context_kernel, dict(mma, CHUNK=896, BN=64, SINGLE=False), 4, 3, True),
        (kt.global_combine_kernel, dict(d, S=22, CR=8), 4, 3, False),
        (kt.global_out_kernel, dict(mma, BM=64, LEPE_UNROLL=True), 4, 2, True),
        (kt.stripe_attn_kernel, dict(mma, L=1536, BM=128, BN=64, LEPE_UNROLL=False), 8, 2, True),
        (kt.stripe_epilogue_kernel, dict(d, BM=64, LEPE_UNROLL=True), 4, 2, False),
    ]
    try:
        compiled = [(sm90_compile(k, "*fp16", c, w, st), k, wg) for k, c, w, st, wg in builds]
    except Exception as e:  # no ptxas in this triton build: cannot check here
        if "ptxas" in str(e).lower():
            pytest.skip(f"cannot compile for sm_90 here: {e}")
        raise
    for c, k, wgmma in compiled:
        assert ("wgmma" in c.asm["ptx"]) == wgmma, k.__name__
        assert stack_bytes(c) in (0, None), f"{k.__name__} spills"


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


def test_bad_impl_and_options():
    with pytest.raises(ValueError, match="valid impls: auto, reference, fast"):
        A.create_attention("elfatt", 32, 4, impl="triton")


@needs_triton
def test_unknown_fast_option(interp):
    m = A.create_attention("elfatt", 32, 4, impl="fast")
    m.fast_options = {"stripe_bm": 16, "bogus": 1}
    with pytest.raises(ValueError, match="unknown fast_options"):
        m(torch.randn(1, 16, 32), (4, 4))


def test_bench_without_cuda_exits_cleanly(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the message is for machines without it")
    from suite import bench_elfatt

    assert bench_elfatt.main([]) == 1
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "Traceback" not in err


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
    fast, ref = pair(192, 3, device="cuda", dtype=torch.float32)
    fast.impl = "auto"
    x = torch.randn(2, 12 * 8, 192)
    xf, xr = x.cuda().requires_grad_(), x.double().requires_grad_()
    fast(xf, (12, 8)).square().sum().backward()
    ref(xr, (12, 8)).square().sum().backward()
    assert fast.run_info()["impl_ran"] == "fast"
    assert rel_err(xf.grad, xr.grad) < 1e-4
