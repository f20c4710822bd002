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
import attentions.elfatt  # noqa: F401  (A.elfatt below)
from refs import reasons_of
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
    assert y.dtype == dtype and fast.run_info()["impl_ran"].startswith("triton")
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
    assert y.dtype == torch.float16 and fast.run_info()["impl_ran"].startswith("triton")
    (y.float() * gy).sum().backward()
    (ref(xr, (4, 6)) * gy.double()).sum().backward()
    assert rel_err(xf.grad, xr.grad) < 2e-2
    for (name, p), pr in zip(fast.named_parameters(), ref.parameters()):
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        assert rel_err(p.grad, pr.grad) < 2e-2, name


@needs_triton
def test_q_k_v_with_different_strides(interp):
    """q contiguous, k a permuted (B, N, h, d) view, v a slice of a wider tensor: each
    is read through its own strides (the plan's key holds all three)."""
    fast, ref = pair(32, 4, block_rows=2, opts={"global_splits": 2})
    B, h, N, d = 2, 4, 24, 8
    q = torch.randn(B, h, N, d)
    k = torch.randn(B, N, h, d).permute(0, 2, 1, 3)
    v = torch.randn(B, h, N, 3 * d)[..., d: 2 * d]
    out = fast.attend(q, k, v, (6, 4))
    assert rel_err(out, ref.attend(q.double(), k.double(), v.double(), (6, 4))) < 1e-5


@needs_triton
@pytest.mark.parametrize("opts", [{"merge_launches": False, "global_splits": 3, "ctx_bn": 16},
                                  {"global_splits": 3, "ctx_bn": 16, "stripe_bm": 16, "stripe_bn": 16},
                                  {"merge_launches": False, "local": "sdpa", "global_splits": 2, "ctx_bn": 16}])
def test_launch_groupings(interp, opts):
    """The combine inside the stripe launch (merged) or on its own, several splits and tiles."""
    fast = check_layer(32, 4, (6, 8), 2, block_rows=2, opts=opts)
    info = fast.run_info()
    merged = opts.get("merge_launches", True) and opts.get("local", "triton") == "triton"
    assert info["launches"] == ("3" if merged else "4"), info


@needs_triton
def test_plans_are_reused(interp, monkeypatch):
    """A case's plan is built once; the next call of the same case only launches."""
    from attentions.kernels import forward_plan

    fast, _ = pair(32, 4, block_rows=2)
    built = []
    real = forward_plan.build
    monkeypatch.setattr(forward_plan, "build", lambda *a: built.append(a) or real(*a))
    monkeypatch.setattr(elfatt_fast, "PLANS", type(elfatt_fast.PLANS)())
    x = torch.randn(1, 24, 32)
    with torch.no_grad():
        fast(x, (6, 4)), fast(x, (6, 4)), fast(x.repeat(2, 1, 1), (6, 4))
    assert len(built) == 2  # batch 1 once, batch 2 once


@needs_triton
def test_cuda_graph_off_cuda_runs_eagerly_with_the_reason(interp):
    fast = check_layer(32, 4, (6, 5), 1, block_rows=3, opts={"cuda_graph": True})
    assert fast.run_info()["graph"] == "cuda_graph: needs CUDA, ran eagerly"


class FakeGraph:
    def __init__(self, log):
        self.log = log

    def replay(self):
        self.log.append("replay")


class FakeApi:
    """GraphReplay's view of torch.cuda, recording what it is asked."""

    def __init__(self, fail=False, busy=""):
        self.log, self.fail, self.busy = [], fail, busy

    def unavailable(self):
        return self.busy

    def capture(self, run):
        self.log.append("capture")
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        return FakeGraph(self.log), run()


def test_graph_replay_keys_captures_and_gives_up():
    from attentions.kernels.graphs import GraphReplay

    api = FakeApi()
    g = GraphReplay(api, capacity=2, max_captures=3)
    runs = []

    def run(tag):
        return lambda: runs.append(tag) or f"out{tag}"
    assert g((1,), run(1)) == ("out1", "captured")
    assert g((1,), run(1)) == ("out1", "replay")  # no eager run: the graph's output
    assert runs == [1] and api.log == ["capture", "replay", "replay"]
    assert g((2,), run(2))[1] == "captured" and g((3,), run(3))[1] == "captured"
    assert list(g.graphs) == [(2,), (3,)]  # capacity 2: the least recent went
    out, how = g((4,), run(4))
    assert out == "out4" and "3 captures, the inputs move between calls" in how
    assert g((2,), run(2))[1] == how  # off for good, eager from now on


def test_graph_replay_falls_back_when_capture_is_impossible():
    from attentions.kernels.graphs import GraphReplay

    failing = GraphReplay(FakeApi(fail=True))
    out, how = failing((1,), lambda: "eager")
    assert out == "eager" and how.startswith("cuda_graph off: capture failed: RuntimeError")
    busy = GraphReplay(FakeApi(busy="cuda_graph: ran inside the caller's capture"))
    assert busy((1,), lambda: "eager") == ("eager", "cuda_graph: ran inside the caller's capture")
    assert busy.off == ""  # only this call: a later call outside the capture may capture


def test_torch_graphs_warms_up_on_the_capture_stream(monkeypatch):
    """TorchGraphs with a fake torch.cuda: one eager warm-up on the side stream, then the
    capture on that stream; the graph and the captured output come back."""
    from contextlib import contextmanager

    from attentions.kernels import graphs

    log = []

    class Stream:
        def __init__(self, name="side"):
            self.name = name

        def wait_stream(self, other):
            log.append(f"{self.name} waits {other.name}")

    @contextmanager
    def stream(s):
        log.append(f"on {s.name}")
        yield

    @contextmanager
    def graph(g, stream):
        log.append(f"capture on {stream.name}")
        yield

    fake = types.SimpleNamespace(Stream=Stream, stream=stream, graph=graph, current_stream=lambda: Stream("main"),
                                 CUDAGraph=lambda: "G", is_current_stream_capturing=lambda: False)
    monkeypatch.setattr(graphs.torch, "cuda", fake)
    api = graphs.TorchGraphs()
    outs = iter(["warm", "captured"])
    g, out = api.capture(lambda: log.append("run") or next(outs))
    assert (g, out) == ("G", "captured")
    assert log == ["side waits main", "on side", "run", "main waits side", "capture on side", "run"]
    assert api.unavailable() == ""


def test_forward_plan_replays_by_address(interp):
    """On a (faked) CUDA plan: the graph key is the call's input and weight addresses."""
    from attentions.kernels.graphs import GraphReplay

    fast, ref = pair(32, 4, block_rows=2, opts={"cuda_graph": True})
    q, k, v = (torch.randn(1, 4, 24, 8) for _ in range(3))
    with torch.no_grad():  # inference: the graphs are for it
        fast.attend(q, k, v, (6, 4))  # builds the plan (eagerly: not CUDA)
        plan = next(reversed(elfatt_fast.PLANS.values()))
        api = FakeApi()
        plan.graphs = GraphReplay(api)
        o1 = fast.attend(q, k, v, (6, 4))
        o2 = fast.attend(q, k, v, (6, 4))
        assert fast.run_info()["graph"] == "replay" and api.log == ["capture", "replay", "replay"]
        assert o1.data_ptr() == o2.data_ptr()  # the graph's static output
        assert rel_err(o2, ref.attend(q.double(), k.double(), v.double(), (6, 4))) < 1e-5
        fast.attend(q.clone(), k, v, (6, 4))
        assert api.log.count("capture") == 2  # new addresses, new graph


@needs_triton
@pytest.mark.parametrize("merge", [{"bwd_merge_tiles": True}, {}, {"merge_launches": False}])
def test_direct_launches_pass_what_triton_passes(monkeypatch, merge):
    """The fast launch path hands triton's launcher exactly what ``JITFunction.run`` hands
    it (grid, function, metadata, every argument; tensors as their addresses), for every
    launch of a forward and a fused backward. On the CPU: triton's driver is a fake sm_90
    one whose launcher records its calls; the kernels compile for sm_90 (no GPU needed)."""
    from triton.runtime import driver

    from attentions.kernels import elfatt_backward, launch
    from benchmarks.host_overhead import FakeDriver, FakeLauncher

    calls, seen = [], []
    monkeypatch.setattr(FakeLauncher, "__call__", lambda self, *a: calls.append(a))
    real_call = launch.Launcher.__call__
    monkeypatch.setattr(launch.Launcher, "__call__", lambda self, slots: seen.append((self, slots)) or
                        real_call(self, slots))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(elfatt_fast, "_reasons", lambda *a: ())
    previous = driver._active
    driver.set_active(FakeDriver())
    try:
        fast, _ = pair(24, 3, dtype=torch.float16, block_rows=2, opts={"global_splits": 2, "ctx_bn": 16, **merge})
        x = torch.randn(2, 40, 24, dtype=torch.float16, requires_grad=True)
        fast(x, (4, 10)).float().sum().backward()  # first calls: through triton's JIT
        assert fast.run_info()["fast_launch"] == "on"
        first, compared = list(calls), 0
        for launcher, slots in seen:
            jit_calls, first = first[: len(launcher.launches)], first[len(launcher.launches):]
            calls.clear()
            kept = next(iter(launcher.compiled.values()))
            addrs = [0 if t is None else t.data_ptr() for t in slots]
            for p, c in zip(launcher.launches, kept):
                p.fast(c, addrs, 0, None)
            for j, f in zip(jit_calls, calls):
                assert f[:3] == j[:3] and f[4] is j[4] and f[5] == j[5] and len(f) == len(j)
                assert [a.data_ptr() if isinstance(a, torch.Tensor) else a for a in j[9:]] == list(f[9:])
                compared += 1
        assert len(seen) == 2 and compared == sum(len(launcher.launches) for launcher, _ in seen) >= 6 and elfatt_backward.PLANS
    finally:
        driver._active = previous


def test_launch_plans_fill_a_wave_at_batch_one():
    """Every launch of the forward and the fused backward of ViT-B/16 attention at 1024,
    2048 and 3072 px, batch 1, has at least one program per SM of a 132-SM GPU."""
    from benchmarks import launch_plan

    rows = launch_plan.rows(launch_plan.BATCH1)
    assert {r["direction"] for r in rows} == {"fwd", "fwd_keep", "bwd"}
    short = [(r["res"], r["direction"], r["launch"], r["programs"]) for r in rows if r["programs"] < 132]
    assert short == []
    assert max(int(r["programs"]) for r in rows) > 132


def test_boolean_tuning_knobs_are_checked():
    from attentions.kernels import Tuning

    assert Tuning.from_dict({"cuda_graph": True, "merge_launches": False}).as_dict() == {
        "merge_launches": False, "cuda_graph": True}
    with pytest.raises(ValueError, match="tuning.fast_launch=1; valid: true, false"):
        Tuning.from_dict({"fast_launch": 1})


def test_fast_on_cpu_without_interpreter_is_unsupported(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    m = A.create_attention("elfatt", 32, 4, impl="fast")
    reasons = reasons_of(m, "unsupported", device=torch.device("cpu"), dtype=torch.float32, hw=(4, 4), batch=1)
    assert reasons and "CUDA" in reasons[0]
    with pytest.raises(A.Unsupported, match="device is cpu"):
        m(torch.randn(1, 16, 32), (4, 4))
    float64 = reasons_of(m, "unsupported", device=torch.device("cuda"), dtype=torch.float64, hw=(4, 4), batch=1)
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
    assert fast.run_info()["impl_ran"].startswith("triton")
    assert rel_err(xf.grad, xr.grad) < 1e-2


def test_auto_falls_back_with_the_reason_when_triton_cannot_run(monkeypatch):
    """An older Triton or no C compiler: impl=auto keeps the reference (and says why), impl=fast is unavailable."""
    import importlib.metadata

    real = importlib.metadata.version
    elfatt_fast._triton_problem.cache_clear()
    try:
        with monkeypatch.context() as mp:
            mp.setattr(importlib.metadata, "version", lambda name: "3.2.0" if name == "triton" else real(name))
            why = elfatt_fast.triton_missing()
            assert "triton 3.2.0 is installed; the fast path needs 3.4 or newer" in why
            m = A.create_attention("elfatt", 32, 4)
            mp.setattr(m, "_fast_reasons", lambda device, dtype: [])
            q = types.SimpleNamespace(is_cuda=True, dtype=torch.float16, device=torch.device("cpu"))
            assert not m._use_fast(q) and m._fallback == why
            fast = A.create_attention("elfatt", 32, 4, impl="fast")
            mp.setenv("TRITON_INTERPRET", "1")
            assert why in reasons_of(fast, "unavailable", device="cpu")
        elfatt_fast._triton_problem.cache_clear()
        with monkeypatch.context() as mp:
            mp.setenv("PATH", "/nonexistent")
            mp.delenv("CC", raising=False)
            assert "C compiler" in elfatt_fast._triton_problem(False)
    finally:
        elfatt_fast._triton_problem.cache_clear()
