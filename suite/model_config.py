"""Typed settings of the ``model`` workload and the ``train_proxy`` task.

Kept apart from ``suite/config.py`` so that file stays about the run itself;
``RunConfig`` holds one ``ModelConfig`` (group ``conf/model/``) and one
``ProxyConfig`` (group ``conf/proxy/``). Both are read only when
``workload=model`` or ``task=train_proxy``; the op/layer workloads ignore them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

ARCHS = ("vit", "swin", "cswin")
PROXY_TASKS = ("match", "pathfinder", "listops")


@dataclass
class ModelConfig:
    name: str = "vit_b"
    # vit: patch-conv stem + learnt position embedding, one stage;
    # swin: 4x4 patch-conv stem, Linear 2x2 patch merging between stages;
    # cswin: 7x7 stride-4 conv stem, 3x3 stride-2 conv merging between stages.
    arch: str = "vit"
    patch_size: int = 16  # total stride of the stem
    embed_dim: int = 768  # stage 1 width; each later stage doubles it
    depths: list[int] = field(default_factory=lambda: [12])
    heads: list[int] = field(default_factory=lambda: [12])
    mlp_ratio: float = 4.0
    # Options for every attention layer of a stage, e.g. {window: 7} or
    # {stripe: 2}. Only the options an attention's constructor accepts are
    # passed (attentions.attention_options), so one model serves every attention.
    stage_options: list[Any] = field(default_factory=lambda: [{}])
    # Options that cycle block by block inside a stage, e.g. {shift: [false, true]}.
    block_options: Any = field(default_factory=dict)
    # Options that a "global" stage sets to the stage grid side (see last_stage_global).
    global_options: list[str] = field(default_factory=lambda: ["window", "stripe", "block_rows"])
    native_attention: str = "sdpa"  # used by the stages not in attention_stages
    attention_stages: Optional[list[int]] = None  # 1-based stage numbers; null: every stage
    # true: in the last stage, every option named in global_options is set to
    # the grid side (one window / stripe / block covers the whole grid) and
    # block_options are not cycled, as CSWin's and ELFATT's last stage.
    last_stage_global: bool = False
    base_grid: int = 14  # vit: position-embedding grid (learnt at 224 / 16)
    pos_interp: str = "bicubic"  # vit: resize of the position embedding (align_corners=False)
    num_classes: int = 1000  # random linear head (timed; used by fidelity's top-1 agreement)
    init_std: float = 0.02  # truncated-normal std of Linear weights and the position embedding
    # Fidelity: the model against the same weights with exact attention everywhere.
    fidelity: bool = True
    fidelity_images: int = 16  # random images; top-1 agreement is over these
    fidelity_max_tokens: int = 16384  # per-layer float64 exact references above this are skipped
    attn_share: bool = True  # also time the model with attention layers replaced (see model_workload)


@dataclass
class ProxyConfig:
    task: str = "match"  # match | pathfinder | listops (suite/proxy_data.py)
    # Model overrides for a small, fast proxy (null keeps the model's value).
    patch_size: Optional[int] = 4  # image tasks: the stem stride (vit_t is 16 in the model workload)
    max_blocks: Optional[int] = 2  # blocks per stage, at most (vit_t: 12 -> 2; swin_t: 2-2-6-2 -> 2-2-2-2)
    image_size: int = 32  # match / pathfinder: image side in pixels
    seq_len: int = 64  # listops: padded length, laid out on a sqrt x sqrt grid (a square number)
    max_depth: int = 3  # listops: nesting depth limit
    max_args: int = 5  # listops: operands per operator, at most
    train_size: int = 6000
    test_size: int = 1000
    steps: int = 200
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 30
    grad_clip: float = 1.0
    eval_batch_size: int = 250
