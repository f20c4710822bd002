"""The plan of a backbone: which registered attention runs in which block,
with which options, on which grid. The model never names an attention.

A ``ModelPlan`` says, block by block, which registered attention runs with
which options: the configured attention in ``attention_stages``, the model's
native one elsewhere; per-stage ``stage_options`` and per-block
``block_options`` are passed only where the attention's constructor accepts
them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import attentions

from .config import ARCHS, ModelConfig


# -- the plan: which attention, with which options, on which grid ----------------
@dataclass(frozen=True)
class BlockPlan:
    attention: str
    options: dict


@dataclass(frozen=True)
class StagePlan:
    number: int  # 1-based, as in the papers
    dim: int
    heads: int
    grid: tuple[int, int]
    blocks: tuple[BlockPlan, ...]
    replaced: bool  # runs the configured attention (else the native one)
    global_: bool  # last_stage_global applied


@dataclass(frozen=True)
class ModelPlan:
    name: str
    arch: str
    size: tuple[int, int]  # image height, width in pixels
    patch_size: int
    embed_dim: int
    mlp_ratio: float
    norm_eps: float
    num_classes: int
    init_std: float
    base_grid: int
    pos_interp: str
    stages: tuple[StagePlan, ...]
    notes: tuple[str, ...] = field(default=())

    def stage_attentions(self) -> str:
        return "|".join(s.blocks[0].attention for s in self.stages)


def stride_of(mc: ModelConfig) -> int:
    """Smallest resolution step for which every stage grid is whole."""
    return mc.patch_size * 2 ** (len(mc.depths) - 1)


def structural_reason(mc: ModelConfig, size: tuple[int, int]) -> str | None:
    """Why an image of ``size`` (H, W) pixels cannot give whole stage grids (None when it can)."""
    step = stride_of(mc)
    for side, name in zip(size, ("height", "width")):
        if side < step or side % step:
            merges = len(mc.depths) - 1
            why = f"patch {mc.patch_size}" + (f" and {merges} 2x merges" if merges else "")
            if size[0] == size[1]:
                return f"resolution={side} is not a multiple of {step} ({why})"
            return f"resolution={size[0]}x{size[1]}: the {name} {side} is not a multiple of {step} ({why})"
    return None


def _filtered(name: str, options: dict) -> dict:
    accepted = attentions.attention_options(name)
    return {k: v for k, v in options.items() if k in accepted}


def check_model_config(mc: ModelConfig) -> None:
    """ValueError naming the bad value and the valid choices (what one field's rules cannot say)."""
    if mc.arch not in ARCHS:
        raise ValueError(f"model.arch={mc.arch!r} is not valid; valid archs: {', '.join(ARCHS)}")
    n = len(mc.depths)
    if n < 1 or len(mc.heads) != n or len(mc.stage_options) != n:
        raise ValueError(
            f"model {mc.name}: depths ({len(mc.depths)}), heads ({len(mc.heads)}) and stage_options "
            f"({len(mc.stage_options)}) must list one entry per stage"
        )
    if mc.arch == "vit" and n != 1:
        raise ValueError(f"model {mc.name}: arch vit has one stage, got depths={list(mc.depths)}")
    if mc.patch_size < 1 or mc.embed_dim < 1 or min(mc.depths) < 1:
        raise ValueError(f"model {mc.name}: patch_size, embed_dim and depths must be positive")
    if mc.attention_stages is not None:
        bad = [s for s in mc.attention_stages if not 1 <= s <= n]
        if bad:
            raise ValueError(f"model.attention_stages={list(mc.attention_stages)}: no stage {bad}; valid stages: 1..{n} (1-based)")
    if mc.pos_interp not in ("bicubic", "bilinear"):
        raise ValueError(f"model.pos_interp={mc.pos_interp!r} is not valid; valid: bicubic, bilinear")


def plan_model(mc: ModelConfig, attention: str, attention_options: dict, size: tuple[int, int] | int) -> ModelPlan:
    """Who runs where, for images of ``size`` (H, W) pixels (an int: square).
    ValueError on a bad model config or a size without whole grids."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    check_model_config(mc)
    attentions.attention_info(attention)  # unknown name -> ValueError listing the registered ones
    reason = structural_reason(mc, size)
    if reason:
        raise ValueError(reason)
    notes = []
    native = mc.native_attention
    if native not in attentions.list_attentions():
        notes.append(f"native attention {native!r} is not registered; those stages use 'sdpa'")
        native = "sdpa"
    replaced = set(mc.attention_stages) if mc.attention_stages is not None else set(range(1, len(mc.depths) + 1))
    stages = []
    g = (size[0] // mc.patch_size, size[1] // mc.patch_size)
    for i, (depth, heads) in enumerate(zip(mc.depths, mc.heads)):
        number = i + 1
        dim = mc.embed_dim * 2**i
        name = attention if number in replaced else native
        base = dict(attention_options) if number in replaced else {}
        is_global = mc.last_stage_global and number == len(mc.depths)
        stage_opts = dict(mc.stage_options[i] or {})
        if is_global:  # the attention says which of its options cover the whole grid
            stage_opts.update(attentions.attention_info(name).cls.whole_grid_options(g))
        blocks = []
        for b in range(depth):
            opts = dict(base, **stage_opts)
            if not is_global:
                opts.update({k: list(vals)[b % len(vals)] for k, vals in (mc.block_options or {}).items()})
            blocks.append(BlockPlan(name, _filtered(name, opts)))
        stages.append(StagePlan(number, dim, heads, g, tuple(blocks), number in replaced, is_global))
        g = (g[0] // 2, g[1] // 2)
    return ModelPlan(mc.name, mc.arch, size, mc.patch_size, mc.embed_dim, float(mc.mlp_ratio),
                     float(mc.norm_eps), mc.num_classes, mc.init_std, mc.base_grid, mc.pos_interp, tuple(stages), tuple(notes))


def check_plan(plan: ModelPlan) -> None:
    """Ask every distinct attention layer whether it can run on its stage grid (ValueError if not)."""
    seen = set()
    for s in plan.stages:
        for b in s.blocks:
            key = (b.attention, tuple(sorted(b.options.items())), s.dim, s.heads, s.grid)
            if key in seen:
                continue
            seen.add(key)
            module = attentions.create_attention(b.attention, s.dim, s.heads, **b.options)
            invalid = [r.text for r in module.reasons(hw=s.grid) if r.kind == "invalid"]
            if invalid:
                raise ValueError(f"stage {s.number} ({b.attention}, grid {s.grid[0]}x{s.grid[1]}): {invalid[0]}")


def valid_resolutions(mc: ModelConfig, attention: str, attention_options: dict, upto: int) -> list[int]:
    """Square resolutions up to ``upto`` at which this model and attention build."""
    out = []
    step = stride_of(mc)
    for r in range(step, upto + 1, step):
        try:
            check_plan(plan_model(mc, attention, attention_options, (r, r)))
        except ValueError:
            continue
        out.append(r)
    return out
