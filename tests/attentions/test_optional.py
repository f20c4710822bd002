"""flash_attn and xformers: available paths (fake packages in sys.modules) and
unavailable paths (the real reason)."""
import sys
import types

import pytest
import torch

import attentions as A
from attentions import optional as X
from attentions.packages import import_problem
from refs import bnhd_attention, qkv, reasons_of, ref_attention
from test_flex import check_on_gpu


@pytest.fixture(autouse=True)
def fresh_import_cache():
    import_problem.cache_clear()
    yield
    import_problem.cache_clear()


# -- import problems: the real message -----------------------------------
def test_missing_package_names_the_import_error():
    if import_problem("flash_attn") is None:
        pytest.skip("flash_attn is installed here")
    assert import_problem("flash_attn") == "flash_attn is not installed (ModuleNotFoundError: No module named 'flash_attn')"


def test_blocked_package_is_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # what `import` then raises is ModuleNotFoundError
    assert import_problem("flash_attn").startswith("flash_attn is not installed (ModuleNotFoundError:")


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
    assert import_problem("fake_dep_pkg") == (
        "fake_dep_pkg is installed but its dependency einops_not_here_xyz is missing "
        "(ModuleNotFoundError: No module named 'einops_not_here_xyz')"
    )
    msg = import_problem("fake_abi_pkg")
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
    missing = reasons_of(m, "unavailable", torch.device("cpu"))
    assert len(missing) == 1 and missing[0].startswith("flash_attn is not installed (ModuleNotFoundError:")
    reasons = reasons_of(m, "unsupported", device=torch.device("cpu"), dtype=torch.float16, hw=(2, 5), batch=2)
    assert "flash-attn runs on CUDA only (device is cpu)" in reasons
    with pytest.raises(A.Unavailable, match="flash_attn is not installed"):
        m.attend(*qkv(), (2, 5))


@pytest.mark.parametrize("impl,module,as_tuple", [("fa2", "flash_attn", False), ("fa3", "flash_attn_interface", True),
                                                  ("fa4", "flash_attn.cute", True)])
def test_flash_attn_layout_and_scale(monkeypatch, impl, module, as_tuple):
    calls = []
    fake = fake_flash_module(calls, as_tuple)
    if module == "flash_attn.cute":  # FA4 lives in a subpackage of flash_attn
        monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn"))
    monkeypatch.setitem(sys.modules, module, fake)
    monkeypatch.setattr(X, "flash_case_reasons", lambda *a: [])  # the fake runs on CPU in float64
    m = A.create_attention("flash_attn", 24, 3, impl=impl).double()
    q, k, v = qkv()  # (2, 3, 10, 8): h != N so a layout mix-up shows
    out = m.attend(q, k, v, (2, 5))
    torch.testing.assert_close(out, ref_attention(q, k, v), rtol=1e-12, atol=1e-12)
    assert calls == [{"shape": (2, 10, 3, 8), "scale": 8**-0.5, "causal": False, "dropout": 0.0}]
    assert m.run_info() == {"impl_ran": f"{module} 0.0-fake: flash_attn_func ({impl})"}
    x = torch.randn(2, 10, 24, dtype=torch.float64, requires_grad=True)  # the layer, with gradients
    m(x, (2, 5)).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_flash_attn_present_but_cpu_is_unsupported(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", fake_flash_module([]))
    m = A.create_attention("flash_attn", 24, 3, impl="fa2")
    assert reasons_of(m, "unavailable", torch.device("cpu")) == []
    assert reasons_of(m, "unsupported", device=torch.device("cpu"), dtype=torch.float16, hw=(2, 5), batch=1) == [
        "flash-attn runs on CUDA only (device is cpu)"
    ]
    with pytest.raises(A.Unsupported, match="CUDA only") as e:
        m.attend(*qkv(dtype=torch.float32), (2, 5))
    assert not isinstance(e.value, A.Unavailable)


def test_flash_attn_bad_impl():
    with pytest.raises(ValueError, match="unknown flash_attn impl 'fa5'; valid impls: auto, fa2, fa3, fa4"):
        A.create_attention("flash_attn", 24, 3, impl="fa5")


def test_flash_attn_missing_fa4_names_its_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)
    m = A.create_attention("flash_attn", 24, 3, impl="fa4")
    (reason,) = reasons_of(m, "unavailable", torch.device("cpu"))
    assert "flash_attn is not installed" in reason and "impl=fa4 needs flash-attn-4" in reason


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
    assert "xformers 0.0.35" in m.run_info()["impl_ran"]


def test_xformers_without_cpp_ops_is_unavailable(monkeypatch):
    """The reference GPU box's case: 0.0.35 imports on another torch, finds no operator."""
    install_fake_xformers(monkeypatch, [], has_cpp=False)
    m = A.create_attention("xformers", 24, 3)
    reasons = reasons_of(m, "unavailable", torch.device("cuda"))
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
    missing = reasons_of(m, "unavailable", torch.device("cpu"))
    assert len(missing) == 1 and missing[0].startswith("xformers is not installed (ModuleNotFoundError:")
    reasons = reasons_of(m, "unsupported", device=torch.device("cpu"), dtype=torch.float64, hw=(2, 5), batch=1)
    assert reasons == ["xformers memory_efficient_attention has CUDA operators only (device is cpu)"]
    assert X.xformers_case_reasons(torch.device("cuda"), torch.float64) == [
        "xformers memory_efficient_attention runs float16/bfloat16/float32, not torch.float64"
    ]


@pytest.mark.parametrize("name", ["flash_attn", "xformers"])
def test_flops_are_exact_attention(name):
    m = A.create_attention(name, 24, 3)
    assert m.flops(2, (2, 5), "attend") == 4 * 2 * 3 * 10 * 10 * 8
    assert A.create_attention(name, 24, 3, lepe=True).flops(2, (2, 5), "attend") == 4 * 2 * 3 * 100 * 8 + 2 * 9 * 2 * 24 * 10


# -- on a GPU: a missing or broken package skips with its reason ------------------
@pytest.mark.gpu
@pytest.mark.parametrize("name,options", [("flash_attn", {}), ("flash_attn", {"impl": "fa4"}), ("xformers", {})],
                         ids=["flash_attn", "flash_attn-fa4", "xformers"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_gpu_backends_match_reference(name, options, dtype):
    check_on_gpu(name, dtype, **options)


def test_gpu_check_skips_a_missing_package_with_its_reason(monkeypatch):
    """What the GPU test does when a package is missing, run here with CUDA faked:
    it skips naming the import problem instead of raising Unavailable."""
    monkeypatch.setitem(sys.modules, "xformers", None)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: self)
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: self)
    with pytest.raises(pytest.skip.Exception, match="xformers is not installed"):
        check_on_gpu("xformers", torch.float16)
