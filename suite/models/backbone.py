"""Whole backbones whose every attention layer comes from the attention registry.

- ``vit``: patch-conv stem + learnt position embedding on a ``base_grid`` x
  ``base_grid`` grid, resized bicubically (align_corners=False) to the image's
  grid; one stage of global blocks. No class token: a token that is not on the
  H x W grid would break the attentions that need the grid, so the features
  are the mean of the tokens (timm's ``global_pool='avg'``).
- ``swin``: 4x4 patch-conv stem + LayerNorm; between stages Swin's patch
  merging (2x2 neighbours concatenated, LayerNorm, Linear 4C -> 2C, no bias).
- ``cswin``: conv stem (kernel patch+3, stride patch, padding 2: CSWin's
  7x7 stride-4 conv at patch 4) + LayerNorm; between stages a 3x3 stride-2
  conv C -> 2C + LayerNorm.
All blocks are pre-norm: x + attn(LN(x), hw), then x + MLP(LN(x)) with GELU.
Relative position biases and class tokens are not modelled.

The model never names an attention: a ``ModelPlan`` (``plan.py``) says which
registered attention runs in each block.

Analytic FLOPs (``Backbone.flops``), convention of attentions/base.py (a
matmul is 2*M*N*K, convolutions 2*Cin/groups*k*k*Cout per output pixel,
elementwise work, LayerNorm, GELU, pooling and the position-embedding resize
not counted): each attention layer's own ``flops(batch, hw, "full")`` (qkv,
core, LePE, proj) + stem + merging + MLPs + head.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

import attentions

from .plan import ModelPlan, StagePlan


# -- building blocks --------------------------------------------------------------
class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))

    def flops(self, tokens: int) -> int:
        return 2 * 2 * tokens * self.fc1.in_features * self.fc1.out_features


class Block(nn.Module):
    """Pre-norm transformer block around one registry attention."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, attention: str, options: dict, eps: float = 1e-5):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = attentions.create_attention(attention, dim, heads, **options)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x, hw):  # x (B, N, C)
        x = x + self.attn(self.norm1(x), hw)
        return x + self.mlp(self.norm2(x))


class PatchStem(nn.Module):
    """Conv k=s=patch; vit adds the resized position embedding, swin a LayerNorm."""

    def __init__(self, in_chans: int, dim: int, patch: int, *, norm: bool, pos_grid: int = 0, pos_interp: str = "bicubic",
                 eps: float = 1e-5):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch, patch)
        self.norm = nn.LayerNorm(dim, eps=eps) if norm else nn.Identity()
        self.pos_embed = nn.Parameter(torch.zeros(1, pos_grid * pos_grid, dim)) if pos_grid else None
        self.pos_grid, self.pos_interp = pos_grid, pos_interp

    def pos(self, hw: tuple[int, int]) -> torch.Tensor:
        g = self.pos_grid
        if tuple(hw) == (g, g):
            return self.pos_embed
        m = self.pos_embed.reshape(1, g, g, -1).permute(0, 3, 1, 2)
        m = F.interpolate(m, size=tuple(hw), mode=self.pos_interp, align_corners=False)
        return m.permute(0, 2, 3, 1).reshape(1, hw[0] * hw[1], -1)

    def forward(self, img):
        m = self.proj(img)  # (B, C, H, W)
        hw = (m.shape[2], m.shape[3])
        x = self.norm(m.flatten(2).transpose(1, 2))  # (B, N, C)
        if self.pos_embed is not None:
            x = x + self.pos(hw)
        return x, hw

    def flops(self, batch: int, hw) -> int:
        c = self.proj
        return 2 * batch * hw[0] * hw[1] * c.in_channels * c.kernel_size[0] * c.kernel_size[1] * c.out_channels


class ConvStem(PatchStem):
    """CSWin's stem: conv kernel patch+3, stride patch, padding 2, then LayerNorm."""

    def __init__(self, in_chans: int, dim: int, patch: int, eps: float = 1e-5):
        super().__init__(in_chans, dim, patch, norm=True, eps=eps)
        self.proj = nn.Conv2d(in_chans, dim, patch + 3, patch, padding=2)


class TokenStem(nn.Module):
    """Token ids (B, N) laid out in raster order on an H x W grid: embedding + learnt position."""

    def __init__(self, vocab: int, dim: int, hw: tuple[int, int]):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, hw[0] * hw[1], dim))
        self.hw = tuple(hw)

    def forward(self, tokens):
        return self.embed(tokens) + self.pos_embed, self.hw

    def flops(self, batch: int, hw) -> int:
        return 0  # a table lookup and an add


def _to_map(x, hw):  # (B, N, C) -> (B, C, H, W)
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], hw[0], hw[1])


class LinearMerge(nn.Module):
    """Swin's patch merging: 2x2 neighbours -> 4C, LayerNorm, Linear 4C -> 2C (no bias)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim, eps=eps)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x, hw):
        B, N, C = x.shape
        m = x.reshape(B, hw[0], hw[1], C)
        m = torch.cat([m[:, 0::2, 0::2], m[:, 1::2, 0::2], m[:, 0::2, 1::2], m[:, 1::2, 1::2]], dim=-1)
        out_hw = (hw[0] // 2, hw[1] // 2)
        return self.reduction(self.norm(m.reshape(B, -1, 4 * C))), out_hw

    def flops(self, batch: int, out_hw) -> int:
        return 2 * batch * out_hw[0] * out_hw[1] * self.reduction.in_features * self.reduction.out_features


class ConvMerge(nn.Module):
    """CSWin's merging: conv 3x3 stride 2 C -> 2C, then LayerNorm."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.conv = nn.Conv2d(dim, 2 * dim, 3, 2, padding=1)
        self.norm = nn.LayerNorm(2 * dim, eps=eps)

    def forward(self, x, hw):
        m = self.conv(_to_map(x, hw))
        return self.norm(m.flatten(2).transpose(1, 2)), (m.shape[2], m.shape[3])

    def flops(self, batch: int, out_hw) -> int:
        c = self.conv
        return 2 * batch * out_hw[0] * out_hw[1] * c.in_channels * 9 * c.out_channels


class Stage(nn.Module):
    def __init__(self, sp: StagePlan, mlp_ratio: float, merge: nn.Module | None, eps: float = 1e-5):
        super().__init__()
        self.merge = merge
        self.blocks = nn.ModuleList(Block(sp.dim, sp.heads, mlp_ratio, b.attention, b.options, eps) for b in sp.blocks)
        self.grid = sp.grid

    def forward(self, x, hw):
        if self.merge is not None:
            x, hw = self.merge(x, hw)
        for blk in self.blocks:
            x = blk(x, hw)
        return x, hw


class Backbone(nn.Module):
    """stem -> stages -> LayerNorm -> mean over tokens (features) -> Linear head (logits)."""

    def __init__(self, plan: ModelPlan, in_chans: int = 3):
        super().__init__()
        self.plan = plan
        C, eps = plan.embed_dim, plan.norm_eps
        if plan.arch == "vit":
            self.stem = PatchStem(in_chans, C, plan.patch_size, norm=False, pos_grid=plan.base_grid,
                                  pos_interp=plan.pos_interp)
        elif plan.arch == "swin":
            self.stem = PatchStem(in_chans, C, plan.patch_size, norm=True, eps=eps)
        else:
            self.stem = ConvStem(in_chans, C, plan.patch_size, eps)
        merge_cls = ConvMerge if plan.arch == "cswin" else LinearMerge
        self.stages = nn.ModuleList(
            Stage(sp, plan.mlp_ratio, merge_cls(sp.dim // 2, eps) if i else None, eps) for i, sp in enumerate(plan.stages)
        )
        last = plan.stages[-1].dim
        self.norm = nn.LayerNorm(last, eps=eps)
        self.head = nn.Linear(last, plan.num_classes)
        self.reset_parameters(plan.init_std)

    def reset_parameters(self, std: float) -> None:
        """timm's ViT init: truncated-normal Linear weights, zero biases; LayerNorm 1/0."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for p in (getattr(self.stem, "pos_embed", None),):
            if p is not None:
                nn.init.trunc_normal_(p, std=std, a=-2 * std, b=2 * std)

    def forward_tokens(self, inp):
        x, hw = self.stem(inp)
        for stage in self.stages:
            x, hw = stage(x, hw)
        return self.norm(x)  # (B, N_last, C_last)

    def forward_features(self, inp) -> torch.Tensor:
        return self.forward_tokens(inp).mean(dim=1)  # (B, C_last)

    def forward(self, inp) -> torch.Tensor:
        return self.head(self.forward_features(inp))  # (B, num_classes)

    def flops(self, batch: int) -> dict[str, int]:
        """Analytic FLOPs of one forward: {'total', 'attention'} (see the module docstring)."""
        grid0 = self.plan.stages[0].grid
        total = self.stem.flops(batch, grid0)
        attn = 0
        for sp, stage in zip(self.plan.stages, self.stages):
            n = sp.grid[0] * sp.grid[1]
            if stage.merge is not None:
                total += stage.merge.flops(batch, sp.grid)
            for blk in stage.blocks:
                a = blk.attn.flops(batch, sp.grid, "full")
                attn += a
                total += a + blk.mlp.flops(batch * n)
        total += 2 * batch * self.head.in_features * self.head.out_features
        return {"total": total, "attention": attn}

    def backward_flops(self, batch: int) -> int:
        """Analytic FLOPs of one backward, by the attentions' convention: every
        matmul and convolution twice (both operands' gradients), but the stem's
        once (the images need no gradient), plus the attentions' recomputation."""
        recompute = sum(blk.attn.score_recompute_flops(batch, sp.grid) for sp, _, blk in blocks_of(self))
        return 2 * self.flops(batch)["total"] - self.stem.flops(batch, self.plan.stages[0].grid) + recompute


def build_model(plan: ModelPlan, in_chans: int = 3) -> Backbone:
    return Backbone(plan, in_chans)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- swapping the attention layers (latency share, fidelity) ------------------------
def blocks_of(model: Backbone) -> list[tuple[StagePlan, int, Block]]:
    return [(sp, i, blk) for sp, stage in zip(model.plan.stages, model.stages) for i, blk in enumerate(stage.blocks)]


def replace_attention(model: Backbone, make: Callable[[nn.Module], nn.Module]) -> Backbone:
    """In place: every block's ``attn`` becomes ``make(attn)``."""
    for _, _, blk in blocks_of(model):
        blk.attn = make(blk.attn)
    return model


class IdentityMixer(nn.Module):
    """Stands in for a whole attention layer: returns its (B, N, C) input unchanged,
    so the block computes x + LN(x) and then its MLP, and no qkv/core/proj runs."""

    def forward(self, x, hw):
        return x


class ValueOnly(nn.Module):
    """Keeps an attention layer's qkv and proj Linears but skips the mechanism:
    out = proj(v), v being the value third of qkv(x). Its time minus the
    IdentityMixer's is the projections; the full layer minus it is the core."""

    def __init__(self, attn: nn.Module):
        super().__init__()
        self.qkv, self.proj, self.dim = attn.qkv, attn.proj, attn.dim

    def forward(self, x, hw):
        return self.proj(self.qkv(x)[..., 2 * self.dim :])


def exact_twin(attn: nn.Module) -> nn.Module:
    """Exact softmax attention over all tokens (registry ``sdpa``) with ``attn``'s
    qkv and proj weights. Extra weights (LePE convs, ...) are dropped."""
    twin = attentions.create_attention("sdpa", attn.dim, attn.num_heads, qkv_bias=attn.qkv.bias is not None)
    twin.qkv.load_state_dict(attn.qkv.state_dict())
    twin.proj.load_state_dict(attn.proj.state_dict())
    p = next(attn.parameters())
    return twin.to(device=p.device, dtype=p.dtype)


def model_info(plan: ModelPlan) -> dict:
    """Facts recorded with a model row (JSON column ``model_info``)."""
    return {
        "arch": plan.arch,
        "stages": [
            {"stage": s.number, "dim": s.dim, "heads": s.heads, "depth": len(s.blocks), "grid": list(s.grid),
             "attention": s.blocks[0].attention, "options": [b.options for b in s.blocks][:2],
             "replaced": s.replaced, "global": s.global_}
            for s in plan.stages
        ],
        "pos_embed": f"{plan.pos_interp} from {plan.base_grid}x{plan.base_grid}" if plan.arch == "vit" else "none",
        "notes": list(plan.notes),
    }
