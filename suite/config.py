"""Typed settings, registered in Hydra's ConfigStore so a bad override fails clearly.

The composed config becomes a ``RunConfig`` once, at the entry (``load``);
nothing reads the raw config after that. The attention group stays an open
mapping (each attention has its own options, checked against its constructor
by the registry); everything else is typed. Each field's ``help`` is the
README's settings table (``python -m suite.docs``).
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

PRECISIONS = ("auto", "fp32", "fp16", "bf16", "amp")
DEVICES = ("auto", "cpu", "cuda")
ARCHS = ("vit", "swin", "cswin")
PROXY_TASKS = ("match", "pathfinder", "listops")


class BadInput(ValueError):
    """A setting that cannot work: one clear line for the user, exit code 2."""


def setting(default: Any, help: str, **kw) -> Any:
    """A dataclass field with its one-line description (the README's settings table)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class NameConfig:
    name: str = MISSING


@dataclass
class ModelConfig:
    """Group ``model``: a whole backbone, read by ``workload=model`` and ``workload=train_proxy``."""

    name: str = setting("vit_b", "model name (the conf/model/ file)")
    arch: str = setting("vit", "vit: patch stem + learnt position embedding, one stage; swin: patch stem, "
                               "Linear 2x2 merging; cswin: conv stem, conv merging")
    patch_size: int = setting(16, "total stride of the stem")
    embed_dim: int = setting(768, "stage-1 width; each later stage doubles it")
    depths: list = setting([12], "blocks per stage")
    heads: list = setting([12], "heads per stage")
    mlp_ratio: float = setting(4.0, "MLP hidden width / block width")
    norm_eps: float = setting(1e-5, "LayerNorm epsilon (ViT: 1e-6, as timm and the ViT paper; Swin, CSWin: 1e-5)")
    weights: str = setting("", "a timm-format state dict (.pth/.pt/.bin/.safetensors) to load; empty: random init")
    stage_options: list = setting([{}], "attention options per stage, e.g. {window: 7}; only the options an "
                                        "attention's constructor accepts are passed")
    block_options: Any = setting({}, "options that cycle block by block in a stage, e.g. {shift: [false, true]}")
    global_options: list = setting(["window", "stripe", "block_rows"],
                                   "options a global last stage sets to the grid side")
    native_attention: str = setting("sdpa", "the attention of the stages not in attention_stages")
    attention_stages: Optional[list] = setting(None, "1-based stages that get the configured attention; null: all")
    last_stage_global: bool = setting(False, "the last stage is one window / stripe / block (CSWin, ELFATT)")
    base_grid: int = setting(14, "vit: grid of the learnt position embedding (224 / 16)")
    pos_interp: str = setting("bicubic", "vit: resize of the position embedding: bicubic or bilinear")
    num_classes: int = setting(1000, "classes of the random linear head")
    init_std: float = setting(0.02, "truncated-normal std of Linear weights and the position embedding")
    fidelity: bool = setting(True, "compare with the same weights and exact attention everywhere")
    fidelity_images: int = setting(16, "random images for fidelity (top-1 agreement is over these)")
    fidelity_max_tokens: int = setting(16384, "per-layer float64 references above this many tokens are skipped")
    attn_share: bool = setting(True, "also time the model with its attention layers replaced")


@dataclass
class ProxyConfig:
    """Group ``proxy``: the generated task of ``workload=train_proxy``."""

    task: str = setting("match", "match, pathfinder or listops (generated data)")
    patch_size: Optional[int] = setting(4, "image tasks: the stem stride (null keeps the model's)")
    max_blocks: Optional[int] = setting(2, "blocks per stage, at most (null keeps the model's depths)")
    image_size: int = setting(32, "match / pathfinder: image side in pixels")
    seq_len: int = setting(64, "listops: padded length, on a sqrt x sqrt grid (a square number)")
    max_depth: int = setting(3, "listops: nesting depth limit")
    max_args: int = setting(5, "listops: operands per operator, at most")
    train_size: int = setting(6000, "training examples")
    test_size: int = setting(1000, "held-out examples")
    steps: int = setting(200, "training steps")
    batch_size: int = setting(32, "training batch")
    lr: float = setting(1e-3, "AdamW peak learning rate")
    weight_decay: float = setting(0.05, "AdamW weight decay (not on biases, norms, position embedding)")
    warmup_steps: int = setting(30, "linear warmup steps, then cosine decay to 0")
    grad_clip: float = setting(1.0, "gradient-norm clip")
    eval_batch_size: int = setting(250, "evaluation batch")


@dataclass
class RunConfig:
    attention: Any = MISSING  # {name: <registered>, <constructor options>}
    workload: NameConfig = field(default_factory=lambda: NameConfig("layer"))
    precision: NameConfig = field(default_factory=lambda: NameConfig("auto"))
    device: NameConfig = field(default_factory=lambda: NameConfig("auto"))
    model: ModelConfig = field(default_factory=ModelConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    resolution: int = setting(224, "image side in pixels")
    patch_size: int = setting(16, "grid side = resolution / patch_size (op, layer)")
    batch_size: int = setting(1, "images per call")
    dim: int = setting(768, "channels of the attention layer (op, layer; ViT-B/16: 768)")
    heads: int = setting(12, "heads of the attention layer (op, layer)")
    warmup: int = setting(3, "untimed calls before timing (compilation, caches, autotune)")
    repeats: int = setting(0, "timed calls; 0: enough to fill min_time_s, at least 5")
    min_time_s: float = setting(1.0, "seconds of timed calls when repeats=0")
    flush_l2: bool = setting(True, "CUDA: clear the L2 cache before each timed call (as do_bench does)")
    direction: str = setting("fwd", "fwd: the forward pass; bwd: the backward alone (forward run once outside the "
                                    "timed call, fixed output gradient); fwd_bwd: both (op, layer, model)")
    timing: str = setting("eager", "eager: CUDA events (GPU) or perf_counter (CPU) per call; cuda_graph: replays of "
                                   "the call captured as a CUDA graph; kernels: the sum of one call's GPU kernel times")
    threads: int = setting(0, "torch CPU threads; 0: the CPUs in this process's affinity mask")
    retries: int = setting(2, "a timing flagged noisy/contended/throttled is taken again up to this many times")
    noise_pct: float = setting(20.0, "a p10-p90 spread above this % of the p50 flags the timing noisy")
    contention_cores: float = setting(0.5, "other processes using this many CPU cores during timing flag it contended")
    load_window_s: float = setting(1.0, "seconds over which other processes' CPU load is measured (a shorter timed "
                                        "loop is followed by an idle wait); 0: not measured, and the note says so")
    seed: int = setting(0, "seeds the weights and the inputs")
    accuracy: bool = setting(True, "compute rel_err_vs_exact, rel_err_vs_fp64, cos_sim_vs_exact")
    accuracy_max_tokens: int = setting(16384, "above this many tokens the float64 references are skipped")
    flops_count: bool = setting(True, "count FLOPs with FlopCounterMode once (untimed)")
    records_dir: str = setting("", "where the job writes its rows; empty: the Hydra run / job folder")
    resume: bool = setting(False, "a sweep case that has an ok row in the sweep folder is not measured again")
    skip_unfit: bool = setting(True, "a case whose memory estimate exceeds the free memory is a skipped row")
    memory_limit_mib: float = setting(0.0, "the memory a case may use for skip_unfit; 0: the device's free memory")
    task: Optional[str] = setting(None, "removed: write workload=train_proxy")


def register_configs() -> None:
    """Register the schema in Hydra's ConfigStore and the folder-name resolvers
    (called by run.py and the tests, not at import)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    OmegaConf.register_new_resolver("case_dir", case_dirname, replace=True)
    OmegaConf.register_new_resolver("run_name", run_name, replace=True)
    OmegaConf.register_new_resolver("vit_batch", vit_batch, replace=True)
    OmegaConf.register_new_resolver("run_id", run_id, replace=True)


_RUN_ID: list[str] = []


def run_id() -> str:
    """This process's tag for a single run's folder (pid and 16 random bits, fixed for
    the process): two runs started in the same second never share a folder."""
    if not _RUN_ID:
        import os

        _RUN_ID.append(f"{os.getpid()}{os.urandom(2).hex()}")
    return _RUN_ID[0]


VIT_BATCH = {224: 256, 512: 32}  # the batches the paper-style GPU comparisons use; 1 above


def vit_batch(resolution: Any) -> int:
    """The batch that goes with a resolution in the GPU presets: 256 at 224 px, 32 at 512, else 1."""
    return VIT_BATCH.get(int(resolution), 1)


def case_dirname(overrides: str) -> str:
    """A sweep job's folder, from its overrides (``attention=elfatt,resolution=224``):
    the same case always gets the same folder, whatever its job number."""
    safe = re.sub(r"[^A-Za-z0-9=,._+-]+", "_", str(overrides)) or "defaults"
    if len(safe) > 120:  # file systems stop at 255 bytes; keep it readable and unique
        safe = f"{safe[:100]}_{hashlib.sha1(str(overrides).encode()).hexdigest()[:12]}"
    return safe


def run_name(workload: str, attention: str, resolution: Any, model: str, task: str) -> str:
    """A single run's folder name says what ran."""
    if workload == "train_proxy":
        return f"train_proxy_{task}_{model}_{attention}"
    if workload == "model":
        return f"{model}_{attention}_{resolution}"
    return f"{workload}_{attention}_{resolution}"


@dataclass(frozen=True)
class Job:
    """One job: its typed settings and where it stands."""

    cfg: RunConfig
    run_dir: Path  # where this job's rows go
    label: str  # the attention as tables show it: the preset name, plus options set on the command line
    config_yaml: str  # the resolved config, recorded in each row
    sweep_dir: Path | None = None  # the multirun folder, None in a single run


GROUPS = ("attention", "workload", "precision", "device", "model", "proxy", "experiment")


def unknown_key_line(key: str) -> str:
    """One line for a setting that does not exist, with the closest one that does."""
    names = [k for k, _, _ in settings_help()] + list(GROUPS)
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown setting {key!r}{hint}; the settings are listed in the README's settings table"


def unknown_settings(cfg: DictConfig) -> list[str]:
    """Keys the composed config has that no setting names (a ``+key=value`` typo)."""
    out = [k for k in cfg.keys() if k not in {f.name for f in dataclasses.fields(RunConfig)} | {"hydra"}]
    for group, cls in (("model", ModelConfig), ("proxy", ProxyConfig)):
        node = cfg.get(group)
        if node is not None:
            out += [f"{group}.{k}" for k in node.keys() if k not in {f.name for f in dataclasses.fields(cls)}]
    return out


def load(cfg: DictConfig) -> RunConfig:
    """The composed config as a typed ``RunConfig`` (read once, at the entry). BadInput for an unknown key."""
    unknown = unknown_settings(cfg)
    if unknown:
        raise BadInput(unknown_key_line(unknown[0]))
    typed = OmegaConf.to_object(cfg)
    if not isinstance(typed, RunConfig):  # composed without the schema (e.g. a bare compose in a notebook)
        base = OmegaConf.merge(OmegaConf.structured(RunConfig), cfg)
        typed = OmegaConf.to_object(base)
    typed.attention = dict(typed.attention)
    return typed


def attention_options(cfg: RunConfig) -> dict:
    """The attention's constructor options (everything but its name)."""
    return {k: v for k, v in cfg.attention.items() if k != "name"}


def attention_label(choice: str | None, overrides: list[str], attention: dict) -> str:
    """``sdpa_flash``, or ``elfatt[block_rows=2]`` when options are set on the command line."""
    name = choice or str(attention.get("name"))
    extra = []
    for o in overrides:
        key, sep, value = o.lstrip("+~").partition("=")
        if sep and key.startswith("attention.") and key != "attention.name":
            extra.append(f"{key[len('attention.'):]}={value}")
    return f"{name}[{','.join(sorted(extra))}]" if extra else name


def check_choice(what: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise BadInput(f"{what}={value!r} is not valid; valid choices: {', '.join(map(str, choices))}")


def check_positive(cfg: Any, keys: tuple[str, ...], prefix: str = "", allow_zero: bool = False) -> None:
    """BadInput for the first of ``keys`` that is not a positive (or, with allow_zero, non-negative) number."""
    for key in keys:
        value = getattr(cfg, key)
        if value is None:
            continue
        if value < 0 or (value == 0 and not allow_zero):
            need = "a number >= 0" if allow_zero else "a positive number"
            raise BadInput(f"{prefix}{key}={value} is not valid; valid: {need}")


def grid_of(resolution: int, patch_size: int) -> tuple[int, int]:
    """The token grid for a square image, or a clear error."""
    if patch_size < 1:
        raise BadInput(f"patch_size={patch_size} is not valid; valid: a positive integer")
    if resolution < 1:
        raise BadInput(f"resolution={resolution} is not valid; valid: a positive multiple of patch_size={patch_size}")
    if resolution < patch_size or resolution % patch_size:
        lo = max(patch_size, resolution - resolution % patch_size)
        raise BadInput(
            f"resolution={resolution} is not divisible by patch_size={patch_size}; "
            f"valid resolutions are multiples of {patch_size}, e.g. {lo} or {lo + patch_size}"
        )
    g = resolution // patch_size
    return g, g


def settings_help() -> list[tuple[str, str, str]]:
    """(key, default, help) for every top-level, model and proxy setting."""
    rows = []
    for prefix, cls in (("", RunConfig), ("model.", ModelConfig), ("proxy.", ProxyConfig)):
        for f in dataclasses.fields(cls):
            if "help" not in f.metadata:
                continue
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            rows.append((prefix + f.name, _yaml_value(default), f.metadata["help"]))
    return rows


def _yaml_value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    return str(v) if not isinstance(v, str) else (v or '""')
