"""Swapping a diffusers model's self-attention cores for a registered attention,
through diffusers' attention-processor API.

``SwappedProcessor`` is installed on every self-attention layer (a diffusers
``Attention`` without cross-attention). It keeps the layer's own pieces: any
spatial or group norm, ``to_q``/``to_k``/``to_v``, ``norm_q``/``norm_k``,
``to_out`` (projection and dropout), the residual and the output rescale; only
softmax(QK^T/sqrt(d))V becomes ``core.attend(q, k, v, hw)`` on (B, h, N, d)
tensors, with ``hw`` the layer's token grid in raster order. The grid is
derived at every call from the token count and the latent's aspect ratio and
must equal the grid planned for that layer, else the call fails.
Cross-attention layers keep the processor diffusers gave them (exact SDPA).

One attention module serves every layer with the same (heads, head width,
grid). Its own qkv and proj Linears are dropped (the diffusers layer's are
used). Its convolutions (ELFATT's LePE, agent's and focused_linear's
depthwise convs: additive terms that a pretrained model has no weights for)
are zeroed unless asked to keep their random init.

The processor is an ``nn.Module``, so diffusers registers it (and its core)
under the layer: ``model.to(...)``, ``.double()`` and ``deepcopy`` carry the
cores along.
"""
from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

Grid = tuple[int, int]


class SwappedProcessor(nn.Module):
    """A diffusers attention processor whose attention core is a registered attention."""

    def __init__(self, name: str, core: nn.Module, grid: Grid, latent: Grid):
        super().__init__()
        self.name, self.core, self.grid, self.latent = name, core, tuple(grid), tuple(latent)
        self.stub = False  # True: the core returns v and adds its analytic FLOPs to stub_flops (counting)
        self.stub_flops = 0
        self.calls = 0
        self.ran_grid: Grid | None = None

    def grid_of(self, tokens: int) -> Grid:
        """The token grid with ``tokens`` tokens and the latent's aspect ratio (exact, or an error)."""
        h0, w0 = self.latent
        area = h0 * w0
        s = math.isqrt(area // tokens) if area % tokens == 0 else 0
        if not s or s * s * tokens != area or h0 % s or w0 % s:
            raise RuntimeError(f"{self.name}: {tokens} tokens are not the latent grid {h0}x{w0} scaled by a whole "
                               f"factor on both sides")
        return h0 // s, w0 // s

    def forward(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, **kwargs):
        if encoder_hidden_states is not None or attention_mask is not None:
            raise RuntimeError(f"{self.name}: the swapped processor serves self-attention without a mask only")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        shape4 = hidden_states.shape if hidden_states.ndim == 4 else None
        if shape4 is not None:  # (B, C, H, W) -> (B, HW, C), raster order
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        grid = tuple(shape4[2:]) if shape4 is not None else self.grid_of(hidden_states.shape[1])
        if grid != self.grid:
            raise RuntimeError(f"{self.name}: ran on grid {grid}, planned {self.grid}")
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        q, k, v = (p(hidden_states).unflatten(-1, (attn.heads, -1)).transpose(1, 2)
                   for p in (attn.to_q, attn.to_k, attn.to_v))  # (B, h, N, d)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        self.calls, self.ran_grid = self.calls + 1, grid
        if self.stub:
            self.stub_flops += self.core.flops(q.shape[0], grid, "attend")
            out = v
        else:
            out = self.core.attend(q, k, v, grid)
        out = attn.to_out[1](attn.to_out[0](out.transpose(1, 2).flatten(2).to(q.dtype)))
        if shape4 is not None:
            out = out.transpose(1, 2).reshape(shape4)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def attention_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every diffusers attention layer (a module with a processor), by name."""
    return [(n, m) for n, m in model.named_modules() if hasattr(m, "set_processor") and hasattr(m, "processor")]


def is_self_attention(layer: nn.Module) -> bool:
    return not getattr(layer, "is_cross_attention", False) and not getattr(layer, "only_cross_attention", False)


def prepare_core(core: nn.Module, keep_extras: bool) -> list[str]:
    """Drop the core's own qkv / proj (unused: the diffusers layer's are used) and
    zero its convolutions unless ``keep_extras``; what else it has without
    pretrained weights, for the row's note."""
    core.qkv = None
    core.proj = None
    notes = []
    for name, m in core.named_modules():
        if isinstance(m, nn.Conv2d) and not keep_extras:
            with torch.no_grad():
                m.weight.zero_()
                if m.bias is not None:
                    m.bias.zero_()
    convs = {n for n, m in core.named_modules() if isinstance(m, nn.Conv2d)}
    for name, _ in core.named_parameters():
        if name.rsplit(".", 1)[0] not in convs:
            notes.append(name)
    return notes


@dataclass
class Swap:
    """A model whose self-attention layers run ``SwappedProcessor``s."""

    model: nn.Module
    processors: dict[str, SwappedProcessor]  # layer name -> its processor
    defaults: dict[str, object]  # layer name -> the processor diffusers gave it
    cross: list[str] = field(default_factory=list)  # layers left exact (cross-attention)

    def cores(self) -> dict[str, nn.Module]:
        """Each distinct core under a label: heads, head width and grid."""
        out = {}
        for p in self.processors.values():
            out.setdefault(core_label(p.core, p.grid), p.core)
        return out


def core_label(core: nn.Module, grid: Grid) -> str:
    return f"h{core.num_heads}d{core.head_dim}@{grid[0]}x{grid[1]}"


def swap_attention(model: nn.Module, plan: Callable[[str], Grid], latent: Grid,
                   make_core: Callable[[int, int, Grid], nn.Module]) -> Swap:
    """Install a ``SwappedProcessor`` on every self-attention layer of ``model``;
    ``plan(name)`` is the layer's grid, ``make_core(heads, head_dim, grid)`` builds a core
    (called once per distinct key)."""
    cores: dict[tuple, nn.Module] = {}
    procs, defaults, cross = {}, {}, []
    for name, layer in attention_layers(model):
        defaults[name] = layer.processor
        if not is_self_attention(layer):
            cross.append(name)
            continue
        heads = int(layer.heads)
        head_dim = layer.to_q.out_features // heads
        grid = tuple(plan(name))
        key = (heads, head_dim, grid)
        if key not in cores:
            cores[key] = make_core(heads, head_dim, grid)
        procs[name] = SwappedProcessor(name, cores[key], grid, latent)
    install(model, procs)
    return Swap(model, procs, defaults, cross)


def install(model: nn.Module, processors: dict[str, object]) -> None:
    """Set the processors (layer name -> processor) through diffusers' API: the
    model's ``set_attn_processor`` where it has one (it takes every layer), else
    each layer's ``set_processor``."""
    layers = dict(attention_layers(model))
    if hasattr(model, "set_attn_processor"):
        full = {f"{n}.processor": processors.get(n, layer.processor) for n, layer in layers.items()}
        model.set_attn_processor(full)
        return
    for name, proc in processors.items():
        layers[name].set_processor(proc)


@contextlib.contextmanager
def default_processors(swap: Swap):
    """The model with the processors diffusers gave it (exact attention), then swapped again."""
    install(swap.model, {n: swap.defaults[n] for n in swap.processors})
    try:
        yield swap.model
    finally:
        install(swap.model, dict(swap.processors))


@contextlib.contextmanager
def stubbed(swap: Swap):
    """Each swapped core returns v and adds its analytic FLOPs to the processor's ``stub_flops``."""
    for p in swap.processors.values():
        p.stub, p.stub_flops = True, 0
    try:
        yield
    finally:
        for p in swap.processors.values():
            p.stub = False


def float64_twin(swap: Swap) -> Swap:
    """A float64 copy of the swapped model; each core replaced by its ``float64_reference()``
    (the same function in float64, e.g. ELFATT's reference path)."""
    model = copy.deepcopy(swap.model)
    refs: dict[int, nn.Module] = {}
    procs = {}
    for name, layer in attention_layers(model):
        if name in swap.processors:
            p = layer.processor
            p.core = refs.setdefault(id(p.core), p.core.float64_reference())
            procs[name] = p
    model.double()
    return Swap(model, procs, {n: layer.processor for n, layer in attention_layers(model)}, list(swap.cross))


def grid_summary(swap: Swap) -> tuple[int, str]:
    """How many self-attention layers ran swapped, and their grids with counts
    ("64x64 h8 d40: 2; ..."), in the order the layers first ran."""
    counts: dict[str, int] = {}
    for p in swap.processors.values():
        if p.ran_grid is not None:
            key = f"{p.ran_grid[0]}x{p.ran_grid[1]} h{p.core.num_heads} d{p.core.head_dim}"
            counts[key] = counts.get(key, 0) + 1
    return sum(counts.values()), "; ".join(f"{k}: {v}" for k, v in counts.items())
