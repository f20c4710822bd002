"""workload=diffusion on tiny diffusers models (CPU): the swap keeps the model's
function with exact attention, grids are right on non-square latents, the row
carries fidelity and FLOPs, and a missing diffusers is an unavailable row."""
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import attentions
from suite.config import BadInput
from suite.diffusion import models as M
from suite.diffusion import swap as S

ROOT = Path(__file__).resolve().parents[2]
needs_diffusers = pytest.mark.skipif(importlib.util.find_spec("diffusers") is None,
                                     reason='diffusers is not installed (pip install -e ".[diffusion]")')
TINY = ["workload=diffusion", "device=cpu", "precision=fp32", "warmup=0", "repeats=2", "retries=0", "threads=1"]


def swapped(model_name: str, latent, attention: str, **options):
    d = M.denoiser(model_name, "")
    model = M.build(d, 0)

    def make(heads, head_dim, grid):
        core = attentions.create_attention(attention, heads * head_dim, heads, **options)
        S.prepare_core(core, keep_extras=False)
        return core

    sw = S.swap_attention(model, lambda n: M.planned_grid(n, model, d, latent), latent, make)
    x = M.step_inputs(model, d, 2, latent, 500, 7, 0)
    return d, sw, x


@needs_diffusers
@pytest.mark.parametrize("model_name,latent", [("unet_small", (8, 16)), ("dit_small", (8, 8))])
def test_sdpa_swap_equals_the_default_processor(model_name, latent):
    """The swapped step with exact attention is the model's own step: a wrong
    head split, token order or projection would not be."""
    d, sw, x = swapped(model_name, latent, "sdpa")
    with torch.no_grad():
        got = M.denoise(sw.model, d.family, x)
        with S.default_processors(sw):
            want = M.denoise(sw.model, d.family, x)
    assert got.shape == (2, 4, *latent)
    assert (got - want).norm() / want.norm() < 1e-5
    assert all(p.calls == 1 for p in sw.processors.values())


@needs_diffusers
def test_grids_on_a_non_square_latent():
    """64x128 px -> latent 8x16: each self-attention layer runs on the map its
    Transformer2DModel receives (a hook on that block is the truth)."""
    d, sw, x = swapped("unet_small", (8, 16), "elfatt")
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda m, a, name=n: seen.__setitem__(name, tuple(a[0].shape[-2:])))
             for n, m in sw.model.named_modules() if type(m).__name__ == "Transformer2DModel"]
    with torch.no_grad():
        M.denoise(sw.model, d.family, x)
    for h in hooks:
        h.remove()
    for name, p in sw.processors.items():
        block = name.split(".transformer_blocks.")[0]
        assert p.ran_grid == p.grid == seen[block], name
    assert sorted({p.grid for p in sw.processors.values()}) == [(2, 4), (4, 8), (8, 16)]
    assert S.grid_summary(sw) == (7, "8x16 h2 d16: 3; 4x8 h4 d16: 3; 2x4 h4 d16: 1")


@needs_diffusers
def test_grid_from_tokens_is_exact_or_fails():
    p = S.SwappedProcessor("layer", torch.nn.Identity(), (4, 8), (8, 16))
    assert [p.grid_of(n) for n in (128, 32, 8, 2)] == [(8, 16), (4, 8), (2, 4), (1, 2)]
    with pytest.raises(RuntimeError, match="not the latent grid"):
        p.grid_of(64)


@needs_diffusers
def test_lepe_is_zeroed_unless_kept():
    core = attentions.create_attention("elfatt", 32, 2)
    assert S.prepare_core(core, keep_extras=False) == []
    assert core.qkv is None and all(float(t.detach().abs().sum()) == 0 for t in core.lepe_params())
    kept = attentions.create_attention("elfatt", 32, 2)
    S.prepare_core(kept, keep_extras=True)
    assert all(float(t.detach().abs().sum()) > 0 for t in kept.lepe_params()[::2])


@needs_diffusers
def test_elfatt_row_fidelity_flops_and_fp64(run_job, tmp_path):
    (row,) = run_job([*TINY, "attention=elfatt", "resolution=64x128"], tmp_path)
    assert row.status == "ok", row.reason
    assert row.swapped_layers == 7 and row.exact_layers == 7 and (row.latent_h, row.latent_w) == (8, 16)
    assert 0 < row.rel_err_vs_exact < math.inf  # ELFATT is not exact attention
    assert row.rel_err_vs_fp64 < 1e-5  # float32 vs float64 of the same path
    assert row.flops_analytic == row.flops_counted > row.attn_flops_analytic > 0
    assert "zeroed" in row.reason and "cross-attention stays exact" in row.reason


@needs_diffusers
def test_sdpa_row_is_exact_and_dit_runs(run_job, tmp_path):
    (row,) = run_job([*TINY, "attention=sdpa", "resolution=128", "workload.model=dit_small"], tmp_path)
    assert row.status == "ok", row.reason
    assert row.rel_err_vs_exact < 1e-5 and row.swapped_layers == 2 and row.exact_layers == 0
    assert row.model_class == "DiTTransformer2DModel" and (row.grid_h, row.grid_w) == (8, 8)


def test_missing_diffusers_is_an_unavailable_row(run_job, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers now fails
    (row,) = run_job([*TINY, "attention=elfatt", "resolution=64"], tmp_path)
    assert row.status == "unavailable"
    assert "diffusers is not installed (ModuleNotFoundError" in row.reason


@needs_diffusers
def test_weights_from_a_local_folder(run_job, tmp_path):
    d = M.denoiser("unet_small", "")
    M.build(d, 3).save_pretrained(tmp_path / "pipe" / "unet")
    (row,) = run_job([*TINY, "attention=sdpa", "resolution=64", f"workload.weights={tmp_path / 'pipe'}"],
                     tmp_path / "run")
    assert row.status == "ok" and "weights loaded from" in row.reason
    with pytest.raises(BadInput, match="needs a DiTTransformer2DModel"):
        run_job([*TINY, "workload.model=dit_small", f"workload.weights={tmp_path / 'pipe' / 'unet'}"], tmp_path)


@pytest.mark.parametrize("overrides,message", [
    (["resolution=72"], "not a multiple of 32 px"),
    (["workload.model=dit_small", "resolution=64x128"], "square grid only"),
    (["attention=cswin", "resolution=64"], "stripe=7 does not divide"),
])
def test_bad_settings_are_bad_input(run_job, tmp_path, overrides, message):
    with pytest.raises(BadInput, match=message):
        run_job([*TINY, "attention=elfatt", *overrides], tmp_path)


@needs_diffusers
@pytest.mark.slow
def test_run_py_writes_an_ok_row(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "run.py"), "attention=elfatt", "resolution=64", *TINY,
                        "load_window_s=0", f"hydra.run.dir={tmp_path}"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr[-2000:]
    assert "unet_small" in p.stdout and max(len(line) for line in p.stdout.splitlines()[:-1]) <= 80
    row = pd.read_parquet(tmp_path / "records.parquet").iloc[0]
    assert row.status == "ok" and row.workload == "diffusion" and row.swapped_layers == 7
