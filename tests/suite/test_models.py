"""Backbones (suite/models) and the model workload (suite/workloads/model.py), on tiny settings."""
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import attentions as A
from suite import models as M
from suite.config import BadInput
from suite.models.config import ModelConfig
from suite.flops import count_flops
from suite.workloads.model import fidelity, resolve_plan

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
# Narrow and shallow, same heads, stages, windows and stripes as the real models.
TINY = {
    "vit_t": (dict(embed_dim=24, depths=[2]), 64),
    "vit_s": (dict(embed_dim=24, depths=[2]), 64),
    "vit_b": (dict(embed_dim=48, depths=[2]), 64),
    "swin_t": (dict(embed_dim=24, depths=[2, 2, 1, 1]), 64),
    "cswin_t": (dict(embed_dim=16, depths=[1, 2, 1, 1]), 64),
}
# The three ViTs share one architecture: the smaller two get fewer attentions.
CASES = [(m, a) for m in ("vit_t", "swin_t", "cswin_t") for a in ("elfatt", "sdpa", "efficient_linear", "swin", "cswin")]
CASES += [(m, a) for m in ("vit_s", "vit_b") for a in ("elfatt", "sdpa")]


def model_cfg(name: str, **over) -> ModelConfig:
    d = OmegaConf.to_container(OmegaConf.load(CONF / "model" / f"{name}.yaml"))
    d.update(over)
    return ModelConfig(**d)


def tiny(name: str, **over) -> tuple[ModelConfig, int]:
    shrink, res = TINY[name]
    return model_cfg(name, **{**shrink, **over}), res


def need(attention: str):
    if attention not in A.list_attentions():
        pytest.skip(f"attention {attention!r} is not registered in this tree")


def test_every_model_config_has_a_tiny_setting():
    assert set(MODELS) == set(TINY) == {"vit_t", "vit_s", "vit_b", "swin_t", "cswin_t"}


@pytest.mark.parametrize("name,attention", CASES)
def test_forward_shapes_and_flops(name, attention):
    need(attention)
    mc, res = tiny(name)
    try:
        plan = M.plan_model(mc, attention, {}, res)
        M.check_plan(plan)
    except ValueError:  # e.g. cswin's stripe 7 needs 7 | every grid: the smallest resolution that builds
        res = M.valid_resolutions(mc, attention, {}, 4 * 224)[0]
        plan = M.plan_model(mc, attention, {}, res)
    torch.manual_seed(0)
    model = M.build_model(plan).eval()
    x = torch.randn(2, 3, res, res)
    with torch.no_grad():
        logits = model(x)
        feats = model.forward_features(x)
    assert logits.shape == (2, 1000) and feats.shape == (2, plan.stages[-1].dim)
    assert torch.isfinite(logits).all()
    fl = model.flops(2)
    assert fl["total"] > fl["attention"] > 0
    if attention in ("elfatt", "sdpa") and name != "vit_b":
        # the counter sees every matmul and conv of these paths
        counted = count_flops(lambda: model(x))
        assert counted == pytest.approx(fl["total"], rel=1e-9)


def test_vit_flops_match_a_hand_count():
    mc, res = tiny("vit_t")
    model = M.build_model(M.plan_model(mc, "sdpa", {}, res))
    C, h, n, p, depth = 24, 3, (res // 16) ** 2, 16, 2
    d = C // h
    block = 2 * n * C * 3 * C + 4 * h * n * n * d + 2 * n * C * C + 2 * 2 * n * C * 4 * C
    expected = 2 * n * 3 * p * p * C + depth * block + 2 * C * 1000
    assert model.flops(1)["total"] == expected


@pytest.mark.parametrize("name,params_m", [("vit_t", 5.717), ("swin_t", 28.29), ("cswin_t", 23.55)])
def test_full_size_parameter_counts(name, params_m):
    native = {"vit_t": "sdpa", "swin_t": "swin", "cswin_t": "cswin"}[name]
    need(native)
    with torch.device("meta"):  # shapes only: no memory, no initialisation work
        model = M.build_model(M.plan_model(model_cfg(name), native, {}, 224))
    # timm ViT-Ti/16 5.72M (ours: no class token), Swin-T 28.3M (ours: no relative
    # position bias tables), CSWin-T 23M (the paper)
    assert M.count_params(model) / 1e6 == pytest.approx(params_m, rel=0.01)


def test_vit_position_embedding_is_resized_bicubically():
    mc, _ = tiny("vit_t")
    model = M.build_model(M.plan_model(mc, "sdpa", {}, 224))
    assert model.stem.pos(((14, 14))).data_ptr() == model.stem.pos_embed.data_ptr()
    pe = model.stem.pos((7, 7))
    ref = torch.nn.functional.interpolate(model.stem.pos_embed.reshape(1, 14, 14, -1).permute(0, 3, 1, 2),
                                          size=(7, 7), mode="bicubic", align_corners=False)
    torch.testing.assert_close(pe, ref.permute(0, 2, 3, 1).reshape(1, 49, -1))


def test_bad_resolutions_name_the_valid_ones():
    mc, _ = tiny("swin_t")
    with pytest.raises(BadInput, match=r"resolution=200 .*multiples of 32"):
        resolve_plan(mc, "elfatt", {}, 200)
    mc, _ = tiny("vit_b")
    with pytest.raises(BadInput, match=r"multiples of 16"):
        resolve_plan(mc, "sdpa", {}, 250)
    need("cswin")
    mc, _ = tiny("cswin_t")
    with pytest.raises(BadInput, match=r"stripe=7 does not divide .*valid resolutions up to 1024: 224, 448, 672, 896"):
        resolve_plan(mc, "cswin", {}, 256)


def test_plan_passes_only_accepted_options_and_cycles_shift():
    need("swin")
    mc, _ = tiny("swin_t")
    plan = M.plan_model(mc, "elfatt", {"block_rows": None}, 224)
    for s in plan.stages:
        for b in s.blocks:
            assert "window" not in b.options and "shift" not in b.options
    assert plan.stages[-1].blocks[0].options["block_rows"] == 7  # last stage global: one block of rows
    plan = M.plan_model(mc, "swin", {}, 224)
    assert [b.options for b in plan.stages[0].blocks] == [{"window": 7, "shift": False}, {"window": 7, "shift": True}]
    assert plan.stages[-1].global_ and plan.stages[-1].blocks[0].options == {"window": 7}


def test_attention_stages_and_native_fallback():
    need("swin")
    mc, _ = tiny("swin_t", attention_stages=[3])
    plan = M.plan_model(mc, "elfatt", {}, 224)
    assert plan.stage_attentions() == "swin|swin|elfatt|swin"
    mc, _ = tiny("swin_t", native_attention="not_registered", attention_stages=[1])
    plan = M.plan_model(mc, "elfatt", {}, 224)
    assert plan.stage_attentions() == "elfatt|sdpa|sdpa|sdpa" and "not_registered" in plan.notes[0]
    with pytest.raises(ValueError, match="valid stages: 1..4"):
        M.plan_model(tiny("swin_t", attention_stages=[5])[0], "elfatt", {}, 224)


def test_cswin_last_stage_is_global_at_448():
    need("cswin")
    mc, _ = tiny("cswin_t")
    plan = M.plan_model(mc, "cswin", {}, 448)
    assert [s.blocks[0].options["stripe"] for s in plan.stages] == [1, 2, 7, 14]


def test_swapped_attention_keeps_shapes_and_exact_twin_is_exact():
    mc, res = tiny("vit_t")
    torch.manual_seed(0)
    model = M.build_model(M.plan_model(mc, "sdpa", {}, res)).eval()
    x = torch.randn(2, 3, res, res)
    with torch.no_grad():
        ref = model.forward_features(x)
        twin = M.replace_attention(M.build_model(model.plan), M.exact_twin)
        twin.load_state_dict(model.state_dict())
        torch.testing.assert_close(twin.forward_features(x), ref)
        M.replace_attention(model, lambda a: M.IdentityMixer())
        assert model.forward_features(x).shape == ref.shape


def test_fidelity_is_perfect_for_exact_attention_and_not_for_elfatt():
    mc, res = tiny("vit_t", fidelity_images=4)
    torch.manual_seed(0)
    exact = fidelity(M.build_model(M.plan_model(mc, "sdpa", {}, res)), mc, res, torch.device("cpu"), 0)
    assert exact["fidelity_top1_agree"] == 1.0 and exact["fidelity_feat_rel_err"] < 1e-5
    assert exact["fidelity_layer_rel_err_max"] < 1e-5 and exact["fidelity_feat_cos"] > 1 - 1e-9
    torch.manual_seed(0)
    el = fidelity(M.build_model(M.plan_model(mc, "elfatt", {}, res)), mc, res, torch.device("cpu"), 0)
    assert el["fidelity_layer_rel_err_mean"] > 1e-2 and el["fidelity_feat_rel_err"] > 1e-3
    assert math.isfinite(el["fidelity_feat_cos"]) and len(el["fidelity_layers"]) > 2


def test_model_workload_end_to_end(run_job, tmp_path):
    (rec,) = run_job([
        "workload=model", "model=swin_t", "attention=elfatt", "resolution=64", "device=cpu", "batch_size=2",
        "model.embed_dim=24", "model.depths=[1,1,1,1]", "model.fidelity_images=2", "warmup=1", "repeats=2",
        "min_time_s=0.01"], tmp_path)
    assert rec.status == "ok", rec.reason
    assert rec.model == "swin_t" and rec.workload == "model" and rec.dim == 24 and rec.heads == 3
    assert rec.patch_size == 4 and rec.tokens == 16 * 16 and rec.params > 0
    assert rec.flops_per_image_counted == pytest.approx(rec.flops_per_image_analytic)
    assert rec.throughput_per_s > 0 and math.isfinite(rec.attn_latency_share)
    assert 0 <= rec.fidelity_top1_agree <= 1 and math.isfinite(rec.fidelity_layer_rel_err_mean)
    assert (tmp_path / "records.csv").exists()
    with pytest.raises(BadInput, match="valid resolutions"):
        run_job(["workload=model", "model=swin_t", "resolution=100"], tmp_path)
