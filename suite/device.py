"""Facts about the machine: device and dtype resolution, versions, NVML readings."""
from __future__ import annotations

import contextlib
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import DEVICES, PRECISIONS, BadInput, check_choice

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    check_choice("device", name, DEVICES)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BadInput("device=cuda but torch sees no CUDA device here; valid choices on this machine: auto, cpu")
    return torch.device(name)


@dataclass(frozen=True)
class Precision:
    name: str  # as configured (auto resolved)
    param_dtype: torch.dtype  # weights and inputs
    compute_dtype: torch.dtype  # what the attention kernels see
    autocast: bool


def resolve_precision(name: str, device: torch.device) -> Precision:
    check_choice("precision", name, PRECISIONS)
    if name == "auto":
        name = "fp16" if device.type == "cuda" else "fp32"
    if name == "amp":
        low = torch.float16 if device.type == "cuda" else torch.bfloat16
        return Precision("amp", torch.float32, low, True)
    return Precision(name, DTYPES[name], DTYPES[name], False)


def dtype_unsupported_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why ``device`` cannot run ``dtype`` (None when it can), found by trying
    the ops attention needs on a tiny tensor rather than by a lookup table."""
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        return f"{torch.cuda.get_device_name(device)} does not support bfloat16"
    try:
        x = torch.randn(1, 2, 4, 4, device=device).to(dtype)
        conv = torch.nn.Conv2d(2, 2, 3, padding=1, groups=2).to(device, dtype)
        (x @ x).softmax(-1) + conv(x)
    except RuntimeError as e:
        return f"{dtype} is not supported on {device.type}: {str(e).splitlines()[0]}"
    return None


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def git_sha() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, cwd=Path(__file__).resolve().parent,
        )
        sha = out.stdout.strip()
        if not sha:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=Path(__file__).resolve().parent).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device: torch.device) -> dict[str, object]:
    """Versions and device identity, recorded with every row."""
    env: dict[str, object] = {
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda or "",
        "cudnn_version": str(torch.backends.cudnn.version() or "") if torch.backends.cudnn.is_available() else "",
        "cpu_model": cpu_model(),
        "hostname": platform.node(),
        "git_sha": git_sha(),
    }
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
    else:
        env["device_name"] = env["cpu_model"]
    return env


class Nvml:
    """GPU clocks, power and energy through NVML, when there is a GPU and pynvml.

    Every method returns {} / None rather than raising: these are annotations
    of a measurement, never a reason to lose it.
    """

    def __init__(self, device: torch.device):
        self.handle = None
        if device.type != "cuda":
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            index = device.index if device.index is not None else torch.cuda.current_device()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._nv = pynvml
        except Exception:  # noqa: BLE001 - NVML missing or broken: the GPU columns stay empty
            self.handle = None

    def clocks(self) -> dict[str, object]:
        if self.handle is None:
            return {}
        nv = self._nv
        out = {}
        with contextlib.suppress(Exception):
            out["gpu_sm_clock_mhz"] = nv.nvmlDeviceGetClockInfo(self.handle, nv.NVML_CLOCK_SM)
            out["gpu_mem_clock_mhz"] = nv.nvmlDeviceGetClockInfo(self.handle, nv.NVML_CLOCK_MEM)
            out["gpu_power_limit_w"] = nv.nvmlDeviceGetEnforcedPowerLimit(self.handle) / 1000
            out["gpu_temp_c"] = nv.nvmlDeviceGetTemperature(self.handle, nv.NVML_TEMPERATURE_GPU)
            out["driver_version"] = nv.nvmlSystemGetDriverVersion()
        return out

    def energy_mj(self) -> float | None:
        if self.handle is None:
            return None
        try:
            return float(self._nv.nvmlDeviceGetTotalEnergyConsumption(self.handle))
        except Exception:  # noqa: BLE001 - not every GPU reports energy
            return None
