"""A backbone's settings (the ``model`` config group, conf/model/): the schema
the workloads that build a backbone type that group with."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from ..config import setting

ARCHS = ("vit", "swin", "cswin")


@dataclass
class ModelConfig:
    """Group ``model``: a whole backbone (suite/models/)."""

    name: str = setting("vit_b", "model name (the conf/model/ file)", slug=True)
    arch: str = setting("vit", "vit: patch stem + learnt position embedding, one stage; swin: patch stem, "
                               "Linear 2x2 merging; cswin: conv stem, conv merging", choices=ARCHS)
    patch_size: int = setting(16, "total stride of the stem", ge=1)
    embed_dim: int = setting(768, "stage-1 width; each later stage doubles it", ge=1)
    depths: list = setting([12], "blocks per stage")
    heads: list = setting([12], "heads per stage")
    mlp_ratio: float = setting(4.0, "MLP hidden width / block width", gt=0)
    norm_eps: float = setting(1e-5, "LayerNorm epsilon (ViT: 1e-6, as timm and the ViT paper; Swin, CSWin: 1e-5)",
                              gt=0)
    weights: str = setting("", "a timm-format state dict (.pth/.pt/.bin/.safetensors) to load; empty: random init")
    stage_options: list = setting([{}], "attention options per stage, e.g. {window: 7}; only the options an "
                                        "attention's constructor accepts are passed")
    block_options: Any = setting({}, "options that cycle block by block in a stage, e.g. {shift: [false, true]}")
    native_attention: str = setting("sdpa", "the attention of the stages not in attention_stages")
    attention_stages: Optional[list] = setting(None, "1-based stages that get the configured attention; null: all")
    last_stage_global: bool = setting(False, "the last stage is one window / stripe / block (CSWin, ELFATT), as "
                                             "each attention says for its grid")
    base_grid: int = setting(14, "vit: grid of the learnt position embedding (224 / 16)", ge=1)
    pos_interp: str = setting("bicubic", "vit: resize of the position embedding", choices=("bicubic", "bilinear"))
    num_classes: int = setting(1000, "classes of the random linear head", ge=1)
    init_std: float = setting(0.02, "truncated-normal std of Linear weights and the position embedding", ge=0)
    fidelity: bool = setting(True, "compare with the same weights and exact attention everywhere", identity=False)
    fidelity_images: int = setting(16, "random images for fidelity (top-1 agreement is over these)", identity=False,
                                   ge=1)
    fidelity_max_tokens: int = setting(16384, "per-layer float64 references above this many tokens are skipped",
                                       identity=False, ge=0)
    attn_share: bool = setting(True, "also time the model with its attention layers replaced", identity=False)
