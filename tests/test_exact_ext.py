"""flash_attn, xformers and flex: available paths (fake packages in sys.modules),
unavailable paths (the real reason), and FlexAttention against float64 references."""
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import attentions as A
from attentions import exact_ext as X


@pytest.fixture(autouse=True)
def fresh_import_cache():
    X.import_problem.cache_clear()
    yield
    X.import_problem.cache_clear()


def ref_attention(q, k, v, scale=None):
    """softmax(q k^T * scale) v in float64, one (batch, head) at a time; (B, h, N, d)."""
    q, k, v = q.double(), k.double(), v.double()
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out = torch.empty_like(q)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            s = q[b, h] @ k[b, h].T * scale
            p = torch.exp(s - s.max(dim=1, keepdim=True).values)
            out[b, h] = (p / p.sum(dim=1, keepdim=True)) @ v[b, h]
    return out


def qkv(B=2, h=3, N=10, d=8, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, h, N, d, generator=g, dtype=dtype) for _ in range(3)]


def bnhd_attention(q, k, v, scale):
    """What a fake kernel computes on (B, N, h, d) inputs."""
    assert q.dim() == 4
    return ref_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale).transpose(1, 2).to(q.dtype)


# -- import problems: the real message -----------------------------------
def test_missing_package_names_the_import_error():
    if X.import_problem("flash_attn") is None:
        pytest.skip("flash_attn is installed here")
    assert X.import_problem("flash_attn") == "flash_attn is not installed (ModuleNotFoundError: No module named 'flash_attn')"


def test_blocked_package_is_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # what `import` then raises is ModuleNotFoundError
    assert X.import_problem("flash_attn").startswith("flash_attn is not installed (ModuleNotFoundError:")


def test_missing_dependency_and_abi_mismatch(tmp_path, monkeypatch):
    pkg = tmp_path / "fake_dep_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import einops_not_here_xyz\n")
    abi = tmp_path / "fake_abi_pkg"
    abi.mkdir()
    (abi / "__init__.py").write_text(
        "raise ImportError('/x/flash_attn_2_cuda.so: undefined symbol: _ZN3c104cuda9SetDeviceEi')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert X.import_problem("fake_dep_pkg") == (
        "fake_dep_pkg is installed but its dependency einops_not_here_xyz is missing "
        "(ModuleNotFoundError: No module named 'einops_not_here_xyz')"
    )
    msg = X.import_problem("fake_abi_pkg")
    assert "fake_abi_pkg is installed but does not import (ImportError: /x/flash_attn_2_cuda.so: undefined symbol" in msg
    assert "built for another torch" in msg


# -- flash_attn ------------------------------------------------------------
def fake_flash_module(calls, return_tuple=False):
    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False):
        calls.append({"shape": tuple(q.shape), "scale": softmax_scale, "causal": causal, "dropout": dropout_p})
        out = bnhd_attention(q, k, v, softmax_scale)
        return (out, None) if return_tuple else out

    mod = types.ModuleType("fake")
    mod.flash_attn_func = flash_attn_func
    mod.__version__ = "0.0-fake"
    return mod


def test_flash_attn_unavailable_reports_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)
    m = A.create_attention("flash_attn", 24, 3).double()
    missing = m.unavailable_reasons(torch.device("cpu"))
    assert len(missing) == 1 and missing[0].startswith("flash_attn is not installed (ModuleNotFoundError:")
    reasons = m.unsupported_reasons(device=torch.device("cpu"), dtype=torch.float16, hw=(2, 5), batch=2)
    assert "flash-attn runs on CUDA only (device is cpu)" in reasons
    with pytest.raises(A.Unavailable, match="flash_attn is not installed"):
        m.attend(*qkv(), (2, 5))


@pytest.mark.parametrize("version,module,as_tuple", [("2", "flash_attn", False), ("3", "flash_attn_interface", True)])
def test_flash_attn_layout_and_scale(monkeypatch, version, module, as_tuple):
    calls = []
    monkeypatch.setitem(sys.modules, module, fake_flash_module(calls, as_tuple))
    monkeypatch.setattr(X, "flash_case_reasons", lambda *a: [])  # the fake runs on CPU in float64
    m = A.create_attention("flash_attn", 24, 3, version=version).double()
    q, k, v = qkv()  # (2, 3, 10, 8): h != N so a layout mix-up shows
    out = m.attend(q, k, v, (2, 5))
    torch.testing.assert_close(out, ref_attention(q, k, v), rtol=1e-12, atol=1e-12)
    assert calls == [{"shape": (2, 10, 3, 8), "scale": 8**-0.5, "causal": False, "dropout": 0.0}]
    assert m.run_info() == {"kernel": f"{module} 0.0-fake: flash_attn_func (FlashAttention-{version})"}
    x = torch.randn(2, 10, 24, dtype=torch.float64, requires_grad=True)  # the layer, with gradients
    m(x, (2, 5)).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_flash_attn_present_but_cpu_is_unsupported(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", fake_flash_module([]))
    m = A.create_attention("flash_attn", 24, 3, version="2")
    assert m.unavailable_reasons(torch.device("cpu")) == []
    assert m.unsupported_reasons(device=torch.device("cpu"), dtype=torch.float16, hw=(2, 5), batch=1) == [
        "flash-attn runs on CUDA only (device is cpu)"
    ]
    with pytest.raises(A.Unsupported, match="CUDA only") as e:
        m.attend(*qkv(dtype=torch.float32), (2, 5))
    assert not isinstance(e.value, A.Unavailable)


def test_flash_attn_bad_version():
    with pytest.raises(ValueError, match="unknown flash-attn version '4'; valid versions: auto, 2, 3"):
        A.create_attention("flash_attn", 24, 3, version="4")


# -- xformers --------------------------------------------------------------
def install_fake_xformers(monkeypatch, calls, has_cpp=True, raise_no_op=False):
    top = types.ModuleType("xformers")
    top.__version__ = "0.0.35"
    top._has_cpp_library = has_cpp
    top._cpp_lib = types.SimpleNamespace(
        _cpp_library_load_exception=None
        if has_cpp
        else RuntimeError(
            "xFormers can't load C++/CUDA extensions. xFormers was built for:\n"
            "    PyTorch 2.10.0+cu128 with CUDA 1208 (you have 2.13.0+cpu)\n"
            "    Python  3.10.19 (you have 3.11.7)\n  Please reinstall xformers"
        )
    )
    ops = types.ModuleType("xformers.ops")

    def memory_efficient_attention(q, k, v, attn_bias=None, p=0.0, scale=None):
        calls.append({"shape": tuple(q.shape), "scale": scale})
        if raise_no_op:
            raise NotImplementedError(
                "No operator found for `memory_efficient_attention_forward` with inputs:\n"
                "     query       : shape=(2, 10, 3, 8) (torch.float64)\n"
                "`cutlassF` is not supported because:\n    dtype=torch.float64 (supported: {torch.float32})"
            )
        return bnhd_attention(q, k, v, scale)

    ops.memory_efficient_attention = memory_efficient_attention
    top.ops = ops
    monkeypatch.setitem(sys.modules, "xformers", top)
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)


def test_xformers_layout_and_scale(monkeypatch):
    calls = []
    install_fake_xformers(monkeypatch, calls)
    monkeypatch.setattr(X, "xformers_case_reasons", lambda *a: [])
    m = A.create_attention("xformers", 24, 3).double()
    q, k, v = qkv()
    torch.testing.assert_close(m.attend(q, k, v, (2, 5)), ref_attention(q, k, v), rtol=1e-12, atol=1e-12)
    assert calls == [{"shape": (2, 10, 3, 8), "scale": 8**-0.5}]
    assert "xformers 0.0.35" in m.run_info()["kernel"]


def test_xformers_without_cpp_ops_is_unavailable(monkeypatch):
    """The reference GPU box's case: 0.0.35 imports on another torch, finds no operator."""
    install_fake_xformers(monkeypatch, [], has_cpp=False)
    m = A.create_attention("xformers", 24, 3)
    reasons = m.unavailable_reasons(torch.device("cuda"))
    assert len(reasons) == 1
    assert reasons[0].startswith("xformers 0.0.35 imports but its C++ ops did not load")
    assert "PyTorch 2.10.0+cu128 with CUDA 1208 (you have 2.13.0+cpu)" in reasons[0]
    with pytest.raises(A.Unavailable, match="C\\+\\+ ops did not load"):
        m.attend(*qkv(dtype=torch.float32), (2, 5))


def test_xformers_no_operator_is_unsupported(monkeypatch):
    install_fake_xformers(monkeypatch, [], raise_no_op=True)
    monkeypatch.setattr(X, "xformers_case_reasons", lambda *a: [])
    m = A.create_attention("xformers", 24, 3).double()
    with pytest.raises(A.Unsupported, match="xformers has no kernel for torch.float64 head_dim=8 on cpu: No operator found") as e:
        m.attend(*qkv(), (2, 5))
    assert not isinstance(e.value, A.Unavailable)


def test_xformers_missing_and_cpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "xformers", None)
    m = A.create_attention("xformers", 24, 3)
    missing = m.unavailable_reasons(torch.device("cpu"))
    assert len(missing) == 1 and missing[0].startswith("xformers is not installed (ModuleNotFoundError:")
    reasons = m.unsupported_reasons(device=torch.device("cpu"), dtype=torch.float64, hw=(2, 5), batch=1)
    assert reasons == ["xformers memory_efficient_attention has CUDA operators only (device is cpu)"]
    assert X.xformers_case_reasons(torch.device("cuda"), torch.float64) == [
        "xformers memory_efficient_attention runs float16/bfloat16/float32, not torch.float64"
    ]


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
    assert m.run_info()["kernel"].startswith("eager flex_attention")
    with torch.no_grad():
        y = m(torch.randn(2, 10, 24, dtype=torch.float64), (2, 5))
    assert y.shape == (2, 10, 24)


def test_flex_cpu_forward_runs_and_backward_is_refused_with_torchs_reason():
    m = A.create_attention("flex", 24, 3)
    reasons = m.unsupported_reasons(device=torch.device("cpu"), dtype=torch.float32, hw=(2, 5), batch=1)
    if X.flex_cpu_backward_problem() is None:
        pytest.skip(f"torch {torch.__version__} has FlexAttention backward on CPU")
    assert reasons == []  # the forward pass, which the harness times, runs on CPU
    assert "FlexAttention does not support backward on CPU" in X.flex_cpu_backward_problem()
    with pytest.raises(A.Unsupported, match="no backward on CPU"):
        m(torch.randn(1, 10, 24, requires_grad=True), (2, 5))
    with torch.no_grad():
        assert m(torch.randn(1, 10, 24), (2, 5)).shape == (1, 10, 24)
    compiled = A.create_attention("flex", 24, 3, mode="compiled")
    assert "compiled FlexAttention on CPU runs float32/float16/bfloat16, not torch.float64" in compiled.unsupported_reasons(
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
    m = A.create_attention("flex", 24, 3, mode="compiled").double()
    assert compiles == []
    q, k, v = qkv()
    out = m.attend(q, k, v, (2, 5))
    m.attend(q, k, v, (2, 5))
    assert compiles == [flex_attention]
    torch.testing.assert_close(out, ref_attention(q, k, v), rtol=1e-12, atol=1e-12)
    assert "cpu" in X.FLEX_COMPILE_S and m.run_info()["kernel"].startswith("torch.compile(flex_attention)")


def test_import_compiles_and_loads_nothing():
    code = (
        "import sys, attentions, attentions.exact_ext as X; "
        "assert X._COMPILED_FLEX is None; "
        "bad = [m for m in ('torch._inductor', 'torch._dynamo', 'flash_attn', 'xformers') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(Path(__file__).parents[1]))


def test_flex_bad_mode():
    with pytest.raises(ValueError, match="unknown flex mode 'jit'; valid modes: auto, compiled, eager"):
        A.create_attention("flex", 24, 3, mode="jit")


@pytest.mark.parametrize("name", ["flash_attn", "xformers", "flex"])
def test_flops_are_exact_attention(name):
    m = A.create_attention(name, 24, 3)
    assert m.flops(2, (2, 5), "op") == 4 * 2 * 3 * 10 * 10 * 8
    assert A.create_attention(name, 24, 3, lepe=True).flops(2, (2, 5), "op") == 4 * 2 * 3 * 100 * 8 + 2 * 9 * 2 * 24 * 10


# -- on a GPU ------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("name", ["flash_attn", "xformers", "flex"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_gpu_backends_match_reference(name, dtype):
    m = A.create_attention(name, 128, 4).to("cuda", dtype)  # head_dim 32
    reasons = m.unsupported_reasons(device=torch.device("cuda"), dtype=dtype, hw=(8, 12), batch=2)
    if reasons:
        pytest.skip("; ".join(reasons))
    q, k, v = qkv(B=2, h=4, N=96, d=32, dtype=torch.float32)
    out = m.attend(q.to("cuda", dtype), k.to("cuda", dtype), v.to("cuda", dtype), (8, 12))
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.double().cpu(), ref_attention(q, k, v), rtol=tol, atol=tol)
    assert m.run_info()["kernel"]
