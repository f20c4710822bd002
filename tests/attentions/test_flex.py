"""FlexAttention (``attentions.functional.flex_attend`` and the ``flex`` attention)
against float64 references; its lazy, shared compile."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import attentions as A
from attentions import functional as X
from refs import qkv, reasons_of, ref_attention


# -- FlexAttention -----------------------------------------------------------
def test_flex_eager_matches_reference():
    q, k, v = qkv(N=12)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        out = X.flex_attend(q.to(dtype), k.to(dtype), v.to(dtype))
        assert out.dtype == dtype
        torch.testing.assert_close(out.double(), ref_attention(q, k, v), rtol=tol, atol=tol)


def test_flex_block_mask_and_score_mod():
    """The helper's hooks: a stripe mask (window attentions) and a score bias."""
    from torch.nn.attention.flex_attention import create_block_mask

    q, k, v = qkv(N=12)
    L = 4  # three blocks of 4 tokens
    mask = create_block_mask(lambda b, h, qi, ki: qi // L == ki // L, None, None, 12, 12, device="cpu")
    out = X.flex_attend(q, k, v, block_mask=mask)
    ref = torch.cat([ref_attention(q[:, :, i : i + L], k[:, :, i : i + L], v[:, :, i : i + L]) for i in (0, 4, 8)], dim=2)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)

    bias = torch.randn(12, 12, dtype=torch.float64)
    out = X.flex_attend(q, k, v, score_mod=lambda s, b, h, qi, ki: s + bias[qi, ki])
    s = q @ k.transpose(-2, -1) * 8**-0.5 + bias
    torch.testing.assert_close(out, s.softmax(-1) @ v, rtol=1e-12, atol=1e-12)


def test_flex_module_forward_on_cpu_without_grad():
    m = A.create_attention("flex", 24, 3).double()
    q, k, v = qkv()
    torch.testing.assert_close(m.attend(q, k, v, (2, 5)), ref_attention(q, k, v), rtol=1e-12, atol=1e-12)
    assert m.run_info()["impl_ran"].startswith("eager flex_attention")
    with torch.no_grad():
        y = m(torch.randn(2, 10, 24, dtype=torch.float64), (2, 5))
    assert y.shape == (2, 10, 24)


def test_flex_cpu_forward_runs_and_backward_is_refused_with_torchs_reason():
    m = A.create_attention("flex", 24, 3)
    reasons = reasons_of(m, "unsupported", device=torch.device("cpu"), dtype=torch.float32, hw=(2, 5), batch=1)
    if X.flex_cpu_backward_problem() is None:
        pytest.skip(f"torch {torch.__version__} has FlexAttention backward on CPU")
    assert reasons == []  # the forward pass, which the harness times, runs on CPU
    assert "FlexAttention does not support backward on CPU" in X.flex_cpu_backward_problem()
    with pytest.raises(A.Unsupported, match="no backward on CPU"):
        m(torch.randn(1, 10, 24, requires_grad=True), (2, 5))
    with torch.no_grad():
        assert m(torch.randn(1, 10, 24), (2, 5)).shape == (1, 10, 24)
    compiled = A.create_attention("flex", 24, 3, impl="compiled")
    assert "compiled FlexAttention on CPU runs float32/float16/bfloat16, not torch.float64" in reasons_of(compiled, "unsupported", 
        device=torch.device("cpu"), dtype=torch.float64, hw=(2, 5), batch=1
    )


@pytest.mark.filterwarnings("ignore:.*without torch.compile")  # the stub hands back the eager function
def test_flex_compiles_lazily_once(monkeypatch):
    """torch.compile is called on first use only, and its result is reused (stubbed: no real compile)."""
    from torch.nn.attention.flex_attention import flex_attention

    compiles = []
    monkeypatch.setattr(X, "_COMPILED_FLEX", None)
    monkeypatch.setattr(X, "FLEX_COMPILE_S", {})
    real_compile = torch.compile

    def counting_compile(fn, **kw):  # eager flex_attention compiles its own internals: pass those through
        if fn is not flex_attention:
            return real_compile(fn, **kw)
        compiles.append(fn)
        return fn

    monkeypatch.setattr(torch, "compile", counting_compile)
    m = A.create_attention("flex", 24, 3, impl="compiled").double()
    assert compiles == []
    q, k, v = qkv(N=64)  # compiled CPU flex is refused where N is not a multiple of 64
    out = m.attend(q, k, v, (8, 8))
    m.attend(q, k, v, (8, 8))
    assert compiles == [flex_attention]
    torch.testing.assert_close(out, ref_attention(q, k, v), rtol=1e-12, atol=1e-12)
    assert "cpu" in X.FLEX_COMPILE_S and m.run_info()["impl_ran"].startswith("torch.compile(flex_attention)")


def test_import_compiles_and_loads_nothing():
    code = (
        "import sys, attentions, attentions.functional as X; "
        "assert X._COMPILED_FLEX is None; "
        "bad = [m for m in ('torch._inductor', 'torch._dynamo', 'flash_attn', 'xformers') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(Path(__file__).parents[2]))


def test_flex_bad_impl():
    with pytest.raises(ValueError, match="unknown flex impl 'jit'; valid impls: auto, compiled, eager"):
        A.create_attention("flex", 24, 3, impl="jit")


@pytest.mark.parametrize("name", ["flex"])
def test_flops_are_exact_attention(name):
    m = A.create_attention(name, 24, 3)
    assert m.flops(2, (2, 5), "attend") == 4 * 2 * 3 * 10 * 10 * 8
    assert A.create_attention(name, 24, 3, lepe=True).flops(2, (2, 5), "attend") == 4 * 2 * 3 * 100 * 8 + 2 * 9 * 2 * 24 * 10


# -- on a GPU ------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_gpu_flex_matches_reference(dtype):
    check_on_gpu("flex", dtype)


def check_on_gpu(name, dtype, **options):
    """An exact backend on CUDA against the float64 reference; a backend that
    cannot run here (package missing or broken, dtype) skips with its reason."""
    m = A.create_attention(name, 128, 4, **options).to("cuda", dtype)  # head_dim 32
    reasons = reasons_of(m, "unavailable", torch.device("cuda"))
    reasons += reasons_of(m, "unsupported", device=torch.device("cuda"), dtype=dtype, hw=(8, 12), batch=2)
    if reasons:
        pytest.skip("; ".join(reasons))
    q, k, v = qkv(B=2, h=4, N=96, d=32, dtype=torch.float32)
    out = m.attend(q.to("cuda", dtype), k.to("cuda", dtype), v.to("cuda", dtype), (8, 12))
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.double().cpu(), ref_attention(q, k, v), rtol=tol, atol=tol)
    assert m.run_info()["impl_ran"]
