"""Typed settings, registered in Hydra's ConfigStore so a bad override fails clearly.

The attention group stays an open mapping (each attention has its own options,
checked against its constructor by the registry); everything else is typed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from .model_config import ModelConfig, ProxyConfig

PRECISIONS = ("auto", "fp32", "fp16", "bf16", "amp")
DEVICES = ("auto", "cpu", "cuda")
WORKLOADS = ("op", "layer", "model")
TASKS = ("measure", "train_proxy")


class BadInput(ValueError):
    """A setting that cannot work: one clear line for the user, exit code 2."""


@dataclass
class WorkloadConfig:
    # op: q, k, v given, the attention core only; layer: qkv + attention + proj.
    name: str = "layer"


@dataclass
class PrecisionConfig:
    # auto: fp16 on CUDA, fp32 on CPU; amp: fp32 weights under autocast.
    name: str = "auto"


@dataclass
class DeviceConfig:
    name: str = "auto"  # auto picks cuda when torch sees one


@dataclass
class RunConfig:
    attention: Any = MISSING  # {name: <registered>, <constructor options>}
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    task: str = "measure"
    resolution: int = 224  # image side in pixels
    patch_size: int = 16  # grid side = resolution / patch_size
    batch_size: int = 1
    dim: int = 768  # ViT-B/16 width
    heads: int = 12
    warmup: int = 3  # untimed calls before timing (compilation, caches, autotune)
    repeats: int = 0  # 0: auto, enough calls for ~`min_time_s` of timing (at least 5)
    min_time_s: float = 1.0
    flush_l2: bool = True  # CUDA: clear L2 before each timed call (as do_bench does)
    seed: int = 0
    accuracy: bool = True  # compute rel_err_vs_exact / rel_err_vs_fp64 / cos_sim_vs_exact
    # The float64 references cost O(N^2) (exact attention): above this many
    # tokens they are skipped and the columns stay empty, with a note.
    accuracy_max_tokens: int = 16384
    flops_count: bool = True  # run FlopCounterMode once (untimed)
    records_dir: str = ""  # "" -> the Hydra run directory
    # Sweeps (suite/sweep.py): resume=true skips a case that already has an ok
    # row under the sweep dir; a case whose memory_estimate exceeds the device's
    # free memory (or memory_limit_mib when > 0) is a `skipped` row, not run.
    resume: bool = False
    variant: str = ""  # the conf/variant/ option used (set by that file; a label only)
    skip_unfit: bool = True
    memory_limit_mib: float = 0.0
    # Read only by workload=model / task=train_proxy (suite/model_workload.py, suite/train_proxy.py).
    model: ModelConfig = field(default_factory=ModelConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)


def register_configs() -> None:
    """Register the schema in Hydra's ConfigStore (called by run.py, not at import)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)


def check_choice(what: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise BadInput(f"{what}={value!r} is not valid; valid choices: {', '.join(map(str, choices))}")


def grid_of(resolution: int, patch_size: int) -> tuple[int, int]:
    """The token grid for a square image, or a clear error."""
    if patch_size < 1:
        raise BadInput(f"patch_size={patch_size} must be a positive integer")
    if resolution < patch_size or resolution % patch_size:
        lo = max(patch_size, resolution - resolution % patch_size)
        raise BadInput(
            f"resolution={resolution} is not divisible by patch_size={patch_size}; "
            f"valid resolutions are multiples of {patch_size}, e.g. {lo} or {lo + patch_size}"
        )
    g = resolution // patch_size
    return g, g
