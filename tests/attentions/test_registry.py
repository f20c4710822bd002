"""Registry-driven: every registered attention gets these checks for free."""
import inspect
from pathlib import Path

import pytest
import torch
import yaml

import attentions as A
from refs import check_grid, reasons_of

CONF = Path(__file__).resolve().parents[2] / "conf" / "attention"
GRIDS = [(7, 7), (14, 7), (6, 4)]  # square, non-square both ways


def build(name, dim=32, heads=4, dtype=torch.float32, **kw):
    torch.manual_seed(0)
    return A.create_attention(name, dim, heads, **kw).to(dtype)


def runnable(m, hw, dtype=torch.float32):
    try:
        check_grid(m, hw)
    except ValueError as e:
        pytest.skip(f"{m.registry_name} rejects grid {hw}: {e}")
    missing = reasons_of(m, "unavailable", torch.device("cpu"))
    if missing:
        pytest.skip(f"{m.registry_name} unavailable here: {'; '.join(missing)}")
    reasons = reasons_of(m, "unsupported", device=torch.device("cpu"), dtype=dtype, hw=hw, batch=2)
    if reasons:
        pytest.skip(f"{m.registry_name} cannot run here: {'; '.join(reasons)}")


@pytest.mark.parametrize("name", A.list_attentions())
@pytest.mark.parametrize("hw", GRIDS, ids=lambda hw: f"{hw[0]}x{hw[1]}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_forward_backward(name, hw, dtype):
    m = build(name, dtype=dtype)
    runnable(m, hw, dtype)
    x = torch.randn(2, hw[0] * hw[1], 32, dtype=dtype, requires_grad=True)
    try:
        y = m(x, hw)
    except A.Unavailable as e:
        pytest.skip(f"{name} unavailable here: {e}")
    except A.Unsupported as e:  # e.g. FlexAttention has no backward on CPU: check the forward alone
        with torch.no_grad():
            y = m(x, hw)
        assert y.shape == x.shape and y.dtype == dtype and torch.isfinite(y).all()
        pytest.skip(f"forward checked; {name} cannot take gradients here: {e}")
    assert y.shape == x.shape and y.dtype == dtype
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert m.qkv.weight.grad is not None and torch.isfinite(m.qkv.weight.grad).all()


@pytest.mark.parametrize("name", A.list_attentions())
def test_module_interface(name):
    m = build(name)
    assert m.registry_name == name
    assert isinstance(m.qkv, torch.nn.Linear) and (m.qkv.in_features, m.qkv.out_features) == (32, 96)
    assert isinstance(m.proj, torch.nn.Linear) and (m.proj.in_features, m.proj.out_features) == (32, 32)
    assert m.qkv.bias is not None
    assert build(name, qkv_bias=False).qkv.bias is None
    assert m.flops(2, (7, 7), "full") > m.flops(2, (7, 7), "attend") > 0


@pytest.mark.parametrize("name", A.list_attentions())
def test_config_yaml_matches_constructor(name):
    """One YAML per attention, holding its name and exactly its constructor options."""
    path = CONF / f"{name}.yaml"
    assert path.exists(), f"conf/attention/{name}.yaml is missing"
    cfg = yaml.safe_load(path.read_text())
    assert cfg.pop("name") == name
    assert set(cfg) == set(A.attention_options(name)), f"{path} keys differ from {name}'s constructor options"


def presets() -> dict[str, dict]:
    """conf/attention/ files that are presets: ``defaults: [<attention>, _self_]`` plus options."""
    out = {}
    for p in CONF.glob("*.yaml"):
        cfg = yaml.safe_load(p.read_text())
        if "defaults" in cfg:
            out[p.stem] = cfg
    return out


def test_every_yaml_is_an_attention_or_a_preset_of_one():
    names = {p.stem for p in CONF.glob("*.yaml")}
    assert names - set(presets()) == set(A.list_attentions())
    for name, cfg in presets().items():
        base, self_ = cfg.pop("defaults")
        assert self_ == "_self_" and base in A.list_attentions(), name
        assert "name" not in cfg and set(cfg) <= set(A.attention_options(base)), name
        A.create_attention(base, 64, 4, **cfg)  # a preset's options build


def test_unknown_attention_lists_names():
    with pytest.raises(ValueError) as e:
        A.create_attention("nope", 32, 4)
    for n in A.list_attentions():
        assert n in str(e.value)


def test_unknown_option_lists_options():
    with pytest.raises(ValueError, match="valid options: .*block_rows"):
        A.create_attention("elfatt", 32, 4, blok_rows=2)


def test_heads_must_divide_dim():
    with pytest.raises(ValueError, match=r"heads=5 does not divide dim=32; valid heads for dim=32: \[1, 2, 4, 8, 16, 32\]"):
        A.create_attention("vanilla", 32, 5)


def test_readme_attention_table_matches_registry():
    from suite.docs import README, attention_table, readme_table

    assert readme_table(README.read_text()) == attention_table(), "run: python -m suite.docs --write"


@pytest.mark.parametrize("name", A.list_attentions())
def test_one_reasons_answer_and_what_ran(name):
    """Every attention answers "can this case run?" once, in kinds the harness knows, and
    says after a call which path ran (``impl_ran``); its counts take parts, not workloads."""
    m = build(name)
    for hw in GRIDS:
        found = m.reasons(hw=hw, device=torch.device("cpu"), dtype=torch.float32, batch=2)
        assert all(isinstance(r, A.Reason) and r.kind in A.REASON_KINDS and r.text for r in found)
        assert [r for r in found if r.kind == "invalid"] == [r for r in m.reasons(hw=hw) if r.kind == "invalid"]
    hw = next((g for g in GRIDS if not m.reasons(hw=g, device=torch.device("cpu"), dtype=torch.float32)), None)
    if hw is None:
        pytest.skip(f"{name} cannot run on any test grid here")
    with torch.no_grad():
        try:
            m(torch.randn(1, hw[0] * hw[1], 32), hw)
        except A.Unsupported as e:
            pytest.skip(f"{name}: {e}")
    assert isinstance(m.run_info().get("impl_ran"), str) and m.run_info()["impl_ran"]
    with pytest.raises(ValueError, match="part="):
        m.flops(1, hw, "op")
    assert isinstance(type(m).whole_grid_options((7, 7)), dict)
    assert "workload" not in str(inspect.signature(m.flops)) + str(inspect.signature(m.memory_estimate))


def test_a_new_attention_is_one_module(tmp_path, monkeypatch):
    """A module dropped into the package registers its attention with no import list to edit;
    importing the package itself imports no attention module (nothing runs at import time)."""
    import subprocess
    import sys

    from attentions import registry

    (tmp_path / "toy_attention.py").write_text(
        "from attentions.exact import VanillaAttention\n"
        "from attentions.registry import register_attention\n\n\n"
        "@register_attention('toy_module_attention', family='exact', complexity='O(N^2 d)')\n"
        "class ToyAttention(VanillaAttention):\n"
        "    pass\n")
    monkeypatch.setattr(A, "__path__", [*A.__path__, str(tmp_path)])
    monkeypatch.setattr(registry, "_discovered", [])
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.delitem(sys.modules, "attentions.toy_attention", raising=False)
    assert "toy_module_attention" in A.list_attentions()
    assert A.create_attention("toy_module_attention", 32, 4).registry_name == "toy_module_attention"
    probe = "import sys, attentions; print(sorted(m for m in sys.modules if m.startswith('attentions.')))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[2]).stdout
    assert "attentions.elfatt" not in loaded and "attentions.exact" not in loaded, loaded


def test_every_module_but_the_helpers_registers_an_attention():
    """The helper list is right: a module left out of discovery would hide its attentions."""
    import pkgutil

    from attentions import registry

    modules = {info.cls.__module__.rsplit(".", 1)[-1] for info in map(A.attention_info, A.list_attentions())}
    files = {m.name for m in pkgutil.iter_modules(A.__path__)} - registry._HELPERS
    assert files == modules
