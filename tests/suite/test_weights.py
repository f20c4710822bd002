"""timm-format weights load into the suite's backbones (state dicts generated
here with timm's key names and shapes: nothing can be downloaded), and the
ViTs use timm's LayerNorm epsilon."""
import pytest
import torch
from omegaconf import OmegaConf

from suite.models.config import ModelConfig
from suite.models import build_model, plan_model
from suite.models.weights import load_timm_weights, read_state_dict
from test_models import CONF

C, HEADS, DEPTH = 24, 3, 2


def vit_cfg(**over) -> ModelConfig:
    d = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "vit_t.yaml"))
    return ModelConfig(**{**d, "embed_dim": C, "heads": [HEADS], "depths": [DEPTH], "num_classes": 10, **over})


def timm_vit_state(grid=14) -> dict:
    """timm's vit_* keys and shapes (class token and its position included), each tensor a distinct constant."""
    shapes = {"cls_token": (1, 1, C), "pos_embed": (1, grid * grid + 1, C), "patch_embed.proj.weight": (C, 3, 16, 16),
              "patch_embed.proj.bias": (C,), "norm.weight": (C,), "norm.bias": (C,), "head.weight": (10, C),
              "head.bias": (10,)}
    for i in range(DEPTH):
        for name, shape in {"norm1.weight": (C,), "norm1.bias": (C,), "attn.qkv.weight": (3 * C, C),
                            "attn.qkv.bias": (3 * C,), "attn.proj.weight": (C, C), "attn.proj.bias": (C,),
                            "norm2.weight": (C,), "norm2.bias": (C,), "mlp.fc1.weight": (4 * C, C),
                            "mlp.fc1.bias": (4 * C,), "mlp.fc2.weight": (C, 4 * C), "mlp.fc2.bias": (C,)}.items():
            shapes[f"blocks.{i}.{name}"] = shape
    return {k: torch.full(s, float(n + 1)) for n, (k, s) in enumerate(shapes.items())}


def test_vit_keys_map_and_the_class_token_is_reported():
    state = timm_vit_state()
    state["pos_embed"][:, 0] = -1.0  # the class token's position: must not land anywhere
    model = build_model(plan_model(vit_cfg(), "sdpa", {}, 224))
    got = load_timm_weights(model, state)
    own = model.state_dict()
    assert torch.equal(own["stages.0.blocks.1.attn.qkv.weight"], state["blocks.1.attn.qkv.weight"])
    assert torch.equal(own["stem.proj.weight"], state["patch_embed.proj.weight"])
    assert torch.equal(own["head.bias"], state["head.bias"])
    assert torch.equal(own["stem.pos_embed"], state["pos_embed"][:, 1:]) and (own["stem.pos_embed"] > 0).all()
    assert got.unused == ["cls_token"] and got.left_random == []
    assert "not used: cls_token" in got.note("w.pth")


def test_elfatt_keeps_its_lepe_at_random_and_says_so():
    model = build_model(plan_model(vit_cfg(), "elfatt", {}, 224))
    got = load_timm_weights(model, timm_vit_state())
    assert any("lepe_global" in k for k in got.left_random) and "left at random init" in got.note("w.pth")


def test_swin_keys_map_and_bias_tables_are_reported():
    d = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "swin_t.yaml"))
    mc = ModelConfig(**{**d, "embed_dim": 24, "depths": [1, 1, 1, 1], "num_classes": 10})
    model = build_model(plan_model(mc, "swin", {}, 224))
    state = {"patch_embed.proj.weight": torch.ones(24, 3, 4, 4), "patch_embed.norm.weight": torch.full((24,), 2.0),
             "layers.1.downsample.reduction.weight": torch.full((48, 96), 3.0),
             "layers.2.blocks.0.attn.qkv.weight": torch.full((288, 96), 4.0),
             "layers.0.blocks.0.attn.relative_position_bias_table": torch.zeros(169, 3),
             "layers.0.blocks.0.attn.relative_position_index": torch.zeros(49, 49, dtype=torch.long),
             "head.fc.weight": torch.full((10, 192), 5.0), "layers.3.blocks.0.mlp.fc1.weight": torch.zeros(1, 1)}
    got = load_timm_weights(model, state)
    own = model.state_dict()
    assert torch.equal(own["stages.1.merge.reduction.weight"], state["layers.1.downsample.reduction.weight"])
    assert torch.equal(own["stages.2.blocks.0.attn.qkv.weight"], state["layers.2.blocks.0.attn.qkv.weight"])
    assert torch.equal(own["head.weight"], state["head.fc.weight"])
    assert torch.equal(own["stem.norm.weight"], state["patch_embed.norm.weight"])
    assert {u.split(" ")[0] for u in got.unused} == {"layers.0.blocks.0.attn.relative_position_bias_table",
                                                     "layers.0.blocks.0.attn.relative_position_index",
                                                     "layers.3.blocks.0.mlp.fc1.weight"}
    assert any("shape (1, 1)" in u for u in got.unused)


def test_wrapped_and_missing_files(tmp_path):
    torch.save({"model": timm_vit_state()}, tmp_path / "w.pth")
    assert "cls_token" in read_state_dict(tmp_path / "w.pth")
    with pytest.raises(FileNotFoundError):
        read_state_dict(tmp_path / "none.pth")


def test_the_model_workload_measures_fidelity_on_loaded_weights(run_job, tmp_path):
    from suite.config import BadInput

    torch.save(timm_vit_state(grid=4), tmp_path / "vit.pth")
    tiny = ["workload=model", "model=vit_t", "attention=sdpa", "resolution=64", "device=cpu", f"model.embed_dim={C}",
            f"model.depths=[{DEPTH}]", "model.num_classes=10", "model.base_grid=4", "model.fidelity_images=2",
            "warmup=1", "repeats=2", "min_time_s=0.01", "retries=0"]
    (row,) = run_job([*tiny, f"model.weights={tmp_path / 'vit.pth'}"], tmp_path / "run")
    assert row.status == "ok" and row.model_weights.endswith("vit.pth")
    assert "weights: 31 tensors from" in row.reason  # every timm tensor but the class token
    assert "not used: cls_token" in row.reason
    with pytest.raises(BadInput, match="no such file"):
        run_job([*tiny, f"model.weights={tmp_path / 'missing.pth'}"], tmp_path / "run2")
    with pytest.raises(BadInput, match="arch cswin has no timm key mapping"):
        run_job(["workload=model", "model=cswin_t", "model.embed_dim=16", "model.depths=[1,1,1,1]", "resolution=64",
                 "device=cpu", f"model.weights={tmp_path / 'vit.pth'}"], tmp_path / "run3")


def test_vits_use_timms_layernorm_epsilon():
    model = build_model(plan_model(vit_cfg(), "sdpa", {}, 224))
    assert model.stages[0].blocks[0].norm1.eps == 1e-6 and model.norm.eps == 1e-6
    d = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "swin_t.yaml"))
    swin = build_model(plan_model(ModelConfig(**{**d, "embed_dim": 24, "depths": [1, 1, 1, 1]}), "swin", {}, 224))
    assert swin.norm.eps == 1e-5
