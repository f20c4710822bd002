"""One flat record per measured case; units in the field names.

Every job writes its rows as ``records.parquet`` and ``records.csv`` in its run
directory as soon as they exist, so a crash later never loses them.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

STATUSES = ("ok", "oom", "unsupported", "unavailable", "invalid", "skipped", "error")

NAN = math.nan


@dataclass(frozen=True)
class Record:
    # what was measured
    attention: str
    workload: str
    resolution: int
    patch_size: int
    grid_h: int
    grid_w: int
    tokens: int
    batch_size: int
    dim: int
    heads: int
    dtype: str  # precision as run: fp32, fp16, bf16, amp
    device: str  # cpu, cuda
    device_name: str
    attention_options: str  # JSON of the attention's options
    # outcome
    status: str  # one of STATUSES
    reason: str = ""
    # timing
    latency_ms_p10: float = NAN
    latency_ms_p50: float = NAN
    latency_ms_p90: float = NAN
    repeats: int = 0
    throughput_per_s: float = NAN  # images (batch items) per second at p50
    # memory
    peak_mem_mib: float = NAN
    peak_extra_mem_mib: float = NAN  # peak minus what was allocated before the call
    mem_method: str = ""
    # work
    flops_analytic: float = NAN
    flops_counted: float = NAN
    tflops_per_s: float = NAN  # from flops_analytic and latency_ms_p50
    sdpa_kernels: str = ""  # SDPA kernels that actually ran (aten ops seen)
    run_info: str = ""  # JSON of facts the attention reported
    # accuracy proxies
    rel_err_vs_exact: float = NAN
    rel_err_vs_fp64: float = NAN
    cos_sim_vs_exact: float = NAN
    # GPU readings (NVML), empty on CPU
    gpu_sm_clock_mhz: float = NAN
    gpu_mem_clock_mhz: float = NAN
    gpu_power_limit_w: float = NAN
    gpu_temp_c: float = NAN
    energy_j: float = NAN  # of the timed loop
    avg_power_w: float = NAN
    driver_version: str = ""
    # environment
    torch_version: str = ""
    cuda_version: str = ""
    cudnn_version: str = ""
    python_version: str = ""
    cpu_model: str = ""
    hostname: str = ""
    git_sha: str = ""
    timestamp: str = ""
    seed: int = 0
    config: str = ""  # the full resolved config, as YAML
    # workload=model / task=train_proxy (suite/model_workload.py, suite/train_proxy.py); empty otherwise.
    # There dim/heads/patch_size/grid/tokens are the model's stage-1 values.
    model: str = ""
    params: int = 0
    stage_attentions: str = ""  # attention per stage, "|"-joined
    model_info: str = ""  # JSON: per-stage dim/heads/grid/options, position embedding, fallbacks
    flops_per_image_analytic: float = NAN  # FLOPs (2 per multiply-add); the papers' "GFLOPs" are MACs: /2
    flops_per_image_counted: float = NAN
    attn_flops_per_image_analytic: float = NAN  # the attention layers' part (qkv, core, LePE, proj)
    latency_ms_p50_attn_identity: float = NAN  # attention layers -> identity on (B, N, C)
    attn_latency_share: float = NAN  # 1 - that / latency_ms_p50
    attn_core_latency_share: float = NAN  # attention core -> v (qkv, proj kept)
    fidelity_images: int = 0
    fidelity_feat_rel_err: float = NAN  # vs the same weights with exact attention everywhere
    fidelity_feat_cos: float = NAN
    fidelity_top1_agree: float = NAN  # random 1000-class head
    fidelity_layer_rel_err_mean: float = NAN  # each layer vs exact attention on its own input
    fidelity_layer_rel_err_max: float = NAN
    fidelity_layer_cos_min: float = NAN
    fidelity_layers: str = ""  # JSON list of {stage, block, rel_err, cos}
    proxy_task: str = ""  # pathfinder, listops
    proxy_steps: int = 0
    proxy_top1: float = NAN  # held-out split
    proxy_train_loss: float = NAN  # mean over the last 10% of steps
    proxy_steps_per_s: float = NAN
    proxy_wall_s: float = NAN  # the whole job: data, training, evaluation
    proxy_eval_items: int = 0

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} not in {STATUSES}")

    def row(self) -> dict:
        return dataclasses.asdict(self)


def record_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(Record)]


def write_records(records: list[Record], directory: str | Path) -> tuple[Path, Path]:
    """Write (overwrite) records.parquet and records.csv in ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame([r.row() for r in records], columns=record_fields())
    pq, csv = directory / "records.parquet", directory / "records.csv"
    df.to_parquet(pq, index=False)
    df.to_csv(csv, index=False)
    return pq, csv


def read_records(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
