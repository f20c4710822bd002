"""The denoisers of ``workload=diffusion``: diffusers models built from a config
with seeded random weights (nothing is downloaded), or loaded from a local folder.

Two families:

- ``unet``: ``UNet2DConditionModel`` (text-conditioned through cross-attention).
  Its self-attention layers run at the latent grid divided by 2 per down block
  before theirs; the latent sides must be multiples of 2^(down blocks - 1) so
  every level's grid is whole.
- ``dit``: ``DiTTransformer2DModel`` (class-conditioned, adaLN-Zero, patch 2).
  Every block runs on the latent grid / patch size. diffusers unpatchifies a
  square grid only, so DiT images are square.

The latent grid is the image size / 8 (the VAE's factor; the VAE is not run).
diffusers is imported inside functions only: without it the workload still
validates its settings and reports the case ``unavailable``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

VAE_FACTOR = 8
MAX_FP64_PARAMS = 100_000_000  # fp64_reference=auto: larger models skip the float64 run

# name -> (family, diffusers config). Small ones run on a CPU; the others are the published shapes.
MODELS: dict[str, tuple[str, dict]] = {
    "unet_small": ("unet", dict(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64, attention_head_dim=(2, 4, 4), norm_num_groups=8)),
    # Stable Diffusion 1.5's UNet shape (860M parameters): 8 heads of 40/80/160 channels.
    "unet_sd15": ("unet", dict(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)),
    "dit_small": ("dit", dict(
        num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=2, patch_size=2,
        sample_size=32, num_embeds_ada_norm=1000)),
    # DiT-XL/2 (Peebles & Xie 2023): 28 blocks, 16 heads of 72 channels; 750M parameters in diffusers'
    # layout (675M in the paper: here every block has its own timestep and class embedders).
    "dit_xl2": ("dit", dict(
        num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28, patch_size=2,
        sample_size=64, num_embeds_ada_norm=1000)),
}
CLASSES = {"unet": "UNet2DConditionModel", "dit": "DiTTransformer2DModel"}
SUBFOLDERS = {"unet": "unet", "dit": "transformer"}  # where a pipeline folder keeps the denoiser


class ModelProblem(ValueError):
    """A setting that cannot work with this model (the workload turns it into BadInput)."""


@dataclass(frozen=True)
class Denoiser:
    """What the workload needs to know about the model before building it."""

    family: str  # unet or dit
    config: dict  # the diffusers config (from MODELS or the weights folder)
    folder: str = ""  # the folder from_pretrained reads; empty: random weights

    @property
    def stride(self) -> int:
        """Latent pixels per token of the first self-attention grid (patch), times the levels' factor."""
        if self.family == "dit":
            return int(self.config.get("patch_size", 2))
        return 2 ** (len(self.config.get("down_block_types", ())) - 1)

    def latent_of(self, size: tuple[int, int]) -> tuple[int, int]:
        """The latent grid of an image of ``size`` pixels, or ModelProblem naming valid sizes."""
        step = VAE_FACTOR * self.stride
        if self.family == "dit" and size[0] != size[1]:
            raise ModelProblem(f"resolution={size[0]}x{size[1]}: diffusers' DiTTransformer2DModel unpatchifies a "
                               f"square grid only; valid: a square resolution (or a unet model)")
        for side in size:
            if side < step or side % step:
                lo = max(step, side - side % step)
                raise ModelProblem(f"resolution side {side} is not a multiple of {step} px (VAE factor {VAE_FACTOR} "
                                   f"x {self.stride} latent pixels per token at the coarsest level); valid sizes are "
                                   f"multiples of {step}, e.g. {lo} or {lo + step}")
        return size[0] // VAE_FACTOR, size[1] // VAE_FACTOR


def denoiser(model: str, weights: str) -> Denoiser:
    """The model ``model`` names, or the one in the folder ``weights`` (its config.json), of that family."""
    family, config = MODELS[model]
    if not weights:
        return Denoiser(family, dict(config))
    folder = Path(weights).expanduser()
    if (folder / SUBFOLDERS[family] / "config.json").is_file():  # a pipeline folder
        folder = folder / SUBFOLDERS[family]
    path = folder / "config.json"
    if not path.is_file():
        raise ModelProblem(f"workload.weights={weights}: no config.json there (nor in {SUBFOLDERS[family]}/); "
                           f"valid: a folder written by diffusers' save_pretrained")
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelProblem(f"workload.weights={weights}: {path} cannot be read ({e})") from None
    if found.get("_class_name") != CLASSES[family]:
        raise ModelProblem(f"workload.weights={weights} holds a {found.get('_class_name')}; workload.model={model} "
                           f"needs a {CLASSES[family]}")
    return Denoiser(family, {k: v for k, v in found.items() if not k.startswith("_")}, str(folder))


def build(d: Denoiser, seed: int) -> torch.nn.Module:
    """The model with seeded random weights, or loaded from its folder (local files only)."""
    import diffusers

    cls = getattr(diffusers, CLASSES[d.family])
    if d.folder:
        return cls.from_pretrained(d.folder, local_files_only=True).eval()
    torch.manual_seed(seed)
    return cls(**d.config).eval()


def moved(model: torch.nn.Module, device, dtype) -> torch.nn.Module:
    """``model.to(device, dtype)`` in eval mode, without diffusers' warning that a
    cast outside from_pretrained may not keep its float32 modules (it lists none here)."""
    from diffusers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        return model.to(device=device, dtype=dtype).eval()
    finally:
        logging.set_verbosity(level)


def self_attention_level(name: str, model: torch.nn.Module, family: str) -> int:
    """How many times the latent grid is halved where the attention layer ``name``
    runs (UNet: down block i runs at level i, the mid block at the last level,
    up block j at levels - 1 - j); for DiT the patch divides it instead (level 0)."""
    if family == "dit":
        return 0
    parts = name.split(".")
    last = len(model.down_blocks) - 1
    if parts[0] == "down_blocks":
        return int(parts[1])
    if parts[0] == "mid_block":
        return last
    if parts[0] == "up_blocks":
        return len(model.up_blocks) - 1 - int(parts[1])
    raise ValueError(f"attention layer {name}: not in a down, mid or up block")


def planned_grid(name: str, model: torch.nn.Module, d: Denoiser, latent: tuple[int, int]) -> tuple[int, int]:
    """The token grid the attention layer ``name`` runs on for a ``latent`` grid."""
    if d.family == "dit":
        p = int(d.config.get("patch_size", 2))
        return latent[0] // p, latent[1] // p
    f = 2 ** self_attention_level(name, model, d.family)
    return latent[0] // f, latent[1] // f


@dataclass
class StepInputs:
    """One denoising step's inputs: noisy latents, timestep, conditioning."""

    latents: torch.Tensor
    timestep: torch.Tensor
    cond: torch.Tensor  # text embeddings (unet) or class labels (dit)

    def to(self, device=None, dtype=None) -> "StepInputs":
        return StepInputs(self.latents.to(device=device, dtype=dtype), self.timestep.to(device),
                          self.cond.to(device=device, dtype=dtype if self.cond.is_floating_point() else None))


def step_inputs(model, d: Denoiser, batch: int, latent: tuple[int, int], timestep: int, text_tokens: int,
                seed: int) -> StepInputs:
    """Seeded on the CPU (the same data on any device): latents, the timestep, and
    random text embeddings (unet) or class labels (dit)."""
    gen = torch.Generator().manual_seed(seed + 1)
    channels = int(model.config.in_channels)
    latents = torch.randn(batch, channels, *latent, generator=gen)
    t = torch.full((batch,), timestep, dtype=torch.long)
    if d.family == "unet":
        cond = torch.randn(batch, text_tokens, int(model.config.cross_attention_dim), generator=gen)
    else:
        cond = torch.randint(0, int(model.config.num_embeds_ada_norm), (batch,), generator=gen)
    return StepInputs(latents, t, cond)


def denoise(model, family: str, x: StepInputs) -> torch.Tensor:
    """One denoising step: the model's noise prediction (DiT's learned variance dropped)."""
    if family == "unet":
        out = model(x.latents, x.timestep, encoder_hidden_states=x.cond, return_dict=False)[0]
    else:
        out = model(x.latents, timestep=x.timestep, class_labels=x.cond, return_dict=False)[0]
    c = x.latents.shape[1]
    return out[:, :c] if out.shape[1] == 2 * c else out


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def fp64_fits(params: int, max_tokens: int, limit: int) -> str:
    """Why fp64_reference=auto skips the float64 run ("" when it runs)."""
    if params > MAX_FP64_PARAMS:
        return f"the model has {params / 1e6:.0f}M parameters (> {MAX_FP64_PARAMS / 1e6:.0f}M)"
    if max_tokens > limit:
        return f"its largest self-attention grid has {max_tokens} tokens > accuracy_max_tokens={limit}"
    return ""

