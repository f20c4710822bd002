"""Trained weights in timm's format, loaded into the suite's backbones
(``model.weights=PATH``), so fidelity is measured on trained weights.

Nothing is downloaded: PATH is a state dict the user has (``.pth``, ``.pt``,
``.bin``, or ``.safetensors``), possibly wrapped as ``{"model": ...}`` or
``{"state_dict": ...}``. Keys are mapped by name:

- ViT (timm ``vit_*``): ``patch_embed.proj`` -> ``stem.proj``, ``pos_embed``
  (the class token's position dropped) -> ``stem.pos_embed``,
  ``blocks.i.*`` -> ``stages.0.blocks.i.*``, ``norm``, ``head``;
- Swin (timm ``swin_*``): ``patch_embed.proj`` / ``patch_embed.norm`` ->
  ``stem.proj`` / ``stem.norm``, ``layers.s.downsample.{norm,reduction}`` ->
  ``stages.s.merge.*`` (timm >= 0.9 puts the merge at the start of a stage, as
  here), ``layers.s.blocks.i.*`` -> ``stages.s.blocks.i.*``, ``norm``,
  ``head.fc`` -> ``head``.

What cannot be used is reported, not hidden: keys with no counterpart here
(the class token, Swin's relative position bias tables and indices, masks),
tensors whose shape differs, and the backbone's parameters left at their
random init (an ELFATT layer's LePE convolutions, for example).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .backbone import Backbone

RULES = {
    "vit": [(r"^patch_embed\.proj\.", "stem.proj."), (r"^pos_embed$", "stem.pos_embed"),
            (r"^blocks\.(\d+)\.", r"stages.0.blocks.\1."), (r"^norm\.", "norm."), (r"^head\.", "head.")],
    "swin": [(r"^patch_embed\.proj\.", "stem.proj."), (r"^patch_embed\.norm\.", "stem.norm."),
             (r"^layers\.(\d+)\.downsample\.", r"stages.\1.merge."), (r"^layers\.(\d+)\.blocks\.(\d+)\.",
                                                                    r"stages.\1.blocks.\2."),
             (r"^norm\.", "norm."), (r"^head\.fc\.", "head."), (r"^head\.", "head.")],
}


@dataclass
class Loaded:
    loaded: list[str] = field(default_factory=list)  # backbone keys that got a tensor
    unused: list[str] = field(default_factory=list)  # checkpoint keys that could not be used, with why
    left_random: list[str] = field(default_factory=list)  # backbone keys no checkpoint tensor reached

    def note(self, path: str) -> str:
        def short(keys):
            groups = sorted({re.sub(r"\.\d+\.", ".*.", k) for k in keys})
            return ", ".join(groups[:6]) + (f", ... ({len(groups) - 6} more kinds)" if len(groups) > 6 else "")

        text = f"weights: {len(self.loaded)} tensors from {path}"
        if self.unused:
            text += f"; not used: {short(self.unused)}"
        if self.left_random:
            text += f"; left at random init: {short(self.left_random)}"
        return text


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("model", "state_dict", "model_state"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict):
        raise ValueError(f"{path} holds a {type(sd).__name__}, not a state dict")
    bad = next(((k, v) for k, v in sd.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise ValueError(f"{path}: entry {bad[0]!r} is a {type(bad[1]).__name__}, not a tensor: not a state dict")
    odd = next((k for k, v in sd.items() if v.is_complex() or v.dtype == torch.bool), None)
    if odd is not None:
        raise ValueError(f"{path}: entry {odd!r} is {sd[odd].dtype}; weights are real numbers")
    return sd


def map_key(arch: str, key: str) -> str | None:
    for pattern, target in RULES.get(arch, []):
        if re.search(pattern, key):
            return re.sub(pattern, target, key)
    return None


def load_timm_weights(model: Backbone, state: dict[str, torch.Tensor]) -> Loaded:
    """Copy what maps from a timm state dict into ``model`` (in place)."""
    own = model.state_dict()
    out = Loaded()
    for key, tensor in state.items():
        target = map_key(model.plan.arch, key)
        if target is None or target not in own:
            out.unused.append(key)
            continue
        if target == "stem.pos_embed" and tensor.dim() == 3 and tensor.shape[1] == own[target].shape[1] + 1:
            tensor = tensor[:, 1:]  # the class token's position: this backbone has no class token
        if tuple(tensor.shape) != tuple(own[target].shape):
            out.unused.append(f"{key} (shape {tuple(tensor.shape)}, here {tuple(own[target].shape)})")
            continue
        own[target] = tensor.to(own[target].dtype)
        out.loaded.append(target)
    model.load_state_dict(own)
    loaded = set(out.loaded)
    out.left_random = [k for k in own if k not in loaded]
    return out
