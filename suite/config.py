"""Typed settings: every setting is a dataclass field whose metadata says what it
means (``help``), what values it takes (``choices``, bounds ``ge``/``gt``/``le``,
finite numbers only, ``slug`` for names that become folder names) and whether it
changes what is measured (``identity``: part of the case a row measures).

One generic validator (``validate``) reads that metadata, so no setting is
checked by hand elsewhere. The composed config becomes a ``RunConfig`` once
(``load``); the workload node and the groups a workload reads are typed by the
workload's own schema in ``suite/job.py`` (this module knows no workload).
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

PRECISIONS = ("auto", "fp32", "fp16", "bf16", "amp")
DEVICES = ("auto", "cpu", "cuda")
DIRECTIONS = ("fwd", "bwd", "fwd_bwd")
TIMINGS = ("eager", "cuda_graph", "kernels")
RESUME = ("false", "true", "trusted")


class BadInput(ValueError):
    """A setting that cannot work: one clear line for the user, exit code 2."""


def setting(default: Any, help: str, *, identity: bool = True, choices: tuple | None = None, ge: float | None = None,
            gt: float | None = None, le: float | None = None, slug: bool = False) -> Any:
    """A dataclass field with its description and the rules ``validate`` applies."""
    meta = {"help": help, "identity": identity, "choices": choices, "ge": ge, "gt": gt, "le": le, "slug": slug}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


# -- the schema ----------------------------------------------------------------
@dataclass
class PrecisionConfig:
    name: str = setting("auto", "compute precision: auto (fp16 on CUDA, fp32 on CPU), fp32, fp16, bf16, amp",
                        choices=PRECISIONS)


@dataclass
class DeviceConfig:
    name: str = setting("auto", "auto (cuda when torch sees a GPU), cpu or cuda", choices=DEVICES)


@dataclass
class RunConfig:
    attention: Any = None  # {name: <registered>, <constructor options>}: checked by the registry
    workload: Any = None  # {name: <registered>, <the workload's settings>}: typed by the workload
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    model: Any = None  # group `model`: typed by the workloads that read it
    proxy: Any = None  # group `proxy`: likewise
    resolution: str = setting("224", "image size in pixels: 224 (square) or HxW, e.g. 512x2048")
    batch_size: int = setting(1, "images per call", ge=1)
    warmup: int = setting(3, "untimed calls before timing (compilation, caches, autotune)", identity=False, ge=0)
    repeats: int = setting(0, "timed calls; 0: enough to fill min_time_s (from a steady-state estimate), at least 5",
                           identity=False, ge=0)
    min_time_s: float = setting(1.0, "seconds of timed calls when repeats=0", identity=False, ge=0)
    flush_l2: bool = setting(True, "CUDA: clear the L2 cache before each timed call (as do_bench does)")
    direction: str = setting("fwd", "fwd: the forward pass; bwd: the backward alone (forward run once outside the "
                                    "timed call, fixed output gradient); fwd_bwd: both", choices=DIRECTIONS)
    timing: str = setting("eager", "eager: CUDA events (GPU) or perf_counter (CPU) per call; cuda_graph: replays of "
                                   "the call captured as a CUDA graph; kernels: the sum of one call's GPU kernel times",
                          choices=TIMINGS)
    threads: int = setting(0, "torch CPU threads; 0: the CPUs in this process's affinity mask", ge=0)
    retries: int = setting(2, "a timing flagged noisy/contended/throttled is taken again up to this many times",
                           identity=False, ge=0)
    noise_pct: float = setting(20.0, "a p10-p90 spread above this % of the p50 flags the timing noisy",
                               identity=False, gt=0)
    contention_cores: float = setting(0.5, "other processes using this many CPU cores during timing flag it "
                                           "contended", identity=False, gt=0)
    load_window_s: float = setting(1.0, "seconds over which other processes' CPU load is measured (a shorter timed "
                                        "loop is followed by an idle wait); 0: not measured, and the note says so",
                                   identity=False, ge=0)
    seed: int = setting(0, "seeds the weights and the inputs", ge=0, le=2**63 - 1)
    accuracy: bool = setting(True, "compute the accuracy proxies (errors vs exact attention and vs float64)",
                             identity=False)
    accuracy_max_tokens: int = setting(16384, "above this many tokens the float64 references are skipped",
                                       identity=False, ge=0)
    flops_count: bool = setting(True, "count FLOPs with FlopCounterMode once (untimed)", identity=False)
    records_dir: str = setting("", "where the job writes its rows; empty: the Hydra run / job folder", identity=False)
    resume: str = setting("false", "sweeps: true: a case with an ok row under the sweep folder is not measured "
                                   "again; trusted: only an ok row whose timing is not flagged counts as done",
                          identity=False, choices=RESUME)
    skip_unfit: bool = setting(True, "a case whose memory estimate exceeds the free memory is a skipped row",
                               identity=False)
    memory_limit_mib: float = setting(0.0, "the memory a case may use for skip_unfit; 0: the device's free memory",
                                      identity=False, ge=0)
    task: Optional[str] = setting(None, "removed: write workload=train_proxy", identity=False)


@dataclass(frozen=True)
class Job:
    """One job: its typed settings and where it stands."""

    cfg: RunConfig  # cfg.workload holds the workload's typed settings
    run_dir: Path  # where this job's rows go
    label: str  # the attention as tables show it: the preset name, plus options set on the command line
    config_yaml: str  # the resolved config, recorded in each row
    sweep_dir: Path | None = None  # the multirun folder, None in a single run


GROUPS = ("attention", "workload", "precision", "device", "model", "proxy", "experiment")


# -- validation --------------------------------------------------------------------
def validate(obj: Any, prefix: str = "") -> None:
    """BadInput naming the first field of dataclass ``obj`` (nested ones too) whose
    value breaks its metadata: choices, bounds, a finite number, a safe name."""
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            validate(value, key + ".")
            continue
        m = f.metadata
        if isinstance(value, float) and not math.isfinite(value):
            raise BadInput(f"{key}={value} is not valid; valid: a finite number")
        if m.get("choices") and value not in m["choices"]:
            raise BadInput(f"{key}={value!r} is not valid; valid choices: {', '.join(map(str, m['choices']))}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            for op, bound, word in (("ge", m.get("ge"), ">="), ("gt", m.get("gt"), ">"), ("le", m.get("le"), "<=")):
                if bound is not None and not {"ge": value >= bound, "gt": value > bound, "le": value <= bound}[op]:
                    shown = int(bound) if float(bound).is_integer() else bound
                    raise BadInput(f"{key}={value} is not valid; valid: a number {word} {shown}")
        if m.get("slug") and isinstance(value, str) and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", value):
            raise BadInput(f"{key}={value!r} is not valid; valid: a name of letters, digits, '.', '_' and '-' "
                           f"(it becomes part of a folder name)")


def typed(node: Any, cls: type, prefix: str) -> Any:
    """``node`` (a mapping) as a validated ``cls`` instance, or BadInput naming the bad key."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), node if node is not None else {})
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise BadInput(explain_config_error(e, prefix, cls)) from None
    validate(obj, prefix)
    return obj


def explain_config_error(e: OmegaConfBaseException, prefix: str, cls: type | None = None) -> str:
    """One line for OmegaConf's validation and key errors."""
    key = prefix + str(getattr(e, "full_key", "") or getattr(e, "key", "") or "")
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "not in struct" in text or "Key '" in text and "not in" in text:
        names = [prefix + f.name for f in dataclasses.fields(cls)] if cls else []
        return unknown_key_line(key, names)
    value = getattr(e, "value", None) if hasattr(e, "value") else None
    for word, kind in (("converted to Integer", "an integer"), ("converted to Float", "a number"),
                       ("not a valid bool", "true or false"), ("converted to String", "a string"),
                       ("Non optional field cannot be assigned None", "a value (not null)")):
        if word in text:
            return f"{key}={value} is not valid; valid: {kind}"
    if "Interpolation" in type(e).__name__ or "interpolation" in text.lower() or "resolver" in text.lower():
        return f"{key}: the value cannot be resolved ({' '.join(text.split())[:160]})"
    return f"{key}: {' '.join(text.split())[:200]}"


def unknown_key_line(key: str, names: list[str] | None = None) -> str:
    """One line for a setting that does not exist, with the closest one that does."""
    names = list(names or []) + [f.name for f in dataclasses.fields(RunConfig)] + list(GROUPS)
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown setting {key!r}{hint}; python run.py --help lists every setting"


def unknown_settings(cfg: DictConfig) -> list[str]:
    """Top-level keys the composed config has that no setting names (a ``+key=value`` typo)."""
    return [k for k in cfg.keys() if k not in {f.name for f in dataclasses.fields(RunConfig)} | {"hydra"}]


def load(cfg: DictConfig) -> RunConfig:
    """The composed config as a typed ``RunConfig`` (read once, at the entry); BadInput
    for an unknown key or a bad value. The workload node stays a mapping here."""
    unknown = unknown_settings(cfg)
    if unknown:
        raise BadInput(unknown_key_line(unknown[0]))
    try:
        container = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        raise BadInput(explain_config_error(e, "")) from None
    for key in ("attention", "workload"):
        if not isinstance(container.get(key), dict) or not container[key].get("name"):
            raise BadInput(f"{key} is not set; choose one (python run.py --help lists conf/{key}/)")
    rest = {k: v for k, v in container.items() if k not in ("attention", "workload", "model", "proxy")}
    if isinstance(rest.get("resume"), (bool, str)):  # resume=true reaches a str field as "True"
        rest["resume"] = str(rest["resume"]).lower()
    run = typed(rest, RunConfig, "")
    run.attention, run.workload = container["attention"], container["workload"]
    run.model, run.proxy = container.get("model"), container.get("proxy")
    return run


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


# -- resolutions ----------------------------------------------------------------------
def parse_resolution(value: Any) -> tuple[int, int]:
    """(height, width) in pixels from ``224`` or ``512x2048``; BadInput otherwise."""
    text = str(value).strip().lower()
    m = re.fullmatch(r"(\d{1,6})(?:x(\d{1,6}))?", text)
    if not m or int(m.group(1)) < 1 or (m.group(2) and int(m.group(2)) < 1):
        raise BadInput(f"resolution={value!r} is not valid; valid: a positive number of pixels (square) or "
                       f"HxW, e.g. 224 or 512x2048")
    h = int(m.group(1))
    return h, int(m.group(2) or h)


def resolution_label(hw: tuple[int, int]) -> str:
    """``224`` for a square image, ``512x2048`` otherwise."""
    return str(hw[0]) if hw[0] == hw[1] else f"{hw[0]}x{hw[1]}"


def grid_of(size: tuple[int, int], patch_size: int) -> tuple[int, int]:
    """The token grid of an image of ``size`` (H, W) pixels, or a clear error."""
    if patch_size < 1:
        raise BadInput(f"patch_size={patch_size} is not valid; valid: a positive integer")
    for side, name in zip(size, ("height", "width")):
        if side < patch_size or side % patch_size:
            lo = max(patch_size, side - side % patch_size)
            what = f"resolution={side}" if size[0] == size[1] else f"resolution={resolution_label(size)}: the {name} {side}"
            raise BadInput(f"{what} is not divisible by patch_size={patch_size}; valid sizes are multiples of "
                           f"{patch_size}, e.g. {lo} or {lo + patch_size}")
    return size[0] // patch_size, size[1] // patch_size


# -- identity and the README's settings table -------------------------------------------
def identity_of(obj: Any) -> dict:
    """The fields of dataclass ``obj`` that change what is measured (``identity`` metadata), nested."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = identity_of(value)
        elif f.metadata.get("identity", True):
            out[f.name] = value
    return out


def canonical(value: Any) -> str:
    """One JSON spelling per value (sorted keys, 224 and 224.0 alike)."""
    def norm(v):
        if isinstance(v, dict):
            return {str(k): norm(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [norm(x) for x in v]
        if isinstance(v, float) and v.is_integer():
            return int(v)
        return v

    return json.dumps(norm(value), sort_keys=True, separators=(",", ":"), default=str)


def short_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def settings_help(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every field of ``cls`` that has a help text."""
    rows = []
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        rows.append((prefix + f.name, yaml_value(default), f.metadata["help"]))
    return rows


def yaml_value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    return str(v) if not isinstance(v, str) else (v or '""')


# -- folder names ---------------------------------------------------------------------
VIT_BATCH = {224: 256, 512: 32}  # the batches the paper-style GPU comparisons use; 1 above


def vit_batch(resolution: Any) -> int:
    """The batch that goes with a resolution in the GPU presets: 256 at 224 px, 32 at 512, else 1."""
    try:
        h, w = parse_resolution(resolution)
    except BadInput:
        return 1
    return VIT_BATCH.get(h, 1) if h == w else 1


def case_dirname(overrides: str) -> str:
    """A sweep job's folder, from its overrides (``attention=elfatt,resolution=224``):
    the same case always gets the same folder, whatever its job number."""
    safe = re.sub(r"[^A-Za-z0-9=,._+-]+", "_", str(overrides)) or "defaults"
    if len(safe) > 120:  # file systems stop at 255 bytes; keep it readable and unique
        safe = f"{safe[:100]}_{short_hash(str(overrides))}"
    return safe


_RUN_ID: list[str] = []


def run_id() -> str:
    """This process's tag for a single run's folder (pid and 16 random bits, fixed for
    the process): two runs started in the same second never share a folder."""
    if not _RUN_ID:
        import os

        _RUN_ID.append(f"{os.getpid():x}{os.urandom(2).hex()}")
    return _RUN_ID[0]
