"""Facts about the machine: device and dtype resolution, versions, NVML readings."""
from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import DEVICES, PRECISIONS, BadInput

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    if name not in DEVICES:
        raise BadInput(f"device={name!r} is not valid; valid choices: {', '.join(DEVICES)}")
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
    if name not in PRECISIONS:
        raise BadInput(f"precision={name!r} is not valid; valid choices: {', '.join(PRECISIONS)}")
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


def available_bytes(device: torch.device) -> tuple[int, str]:
    """Memory a case may use on ``device`` and where that number came from."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free), "cuda free memory (torch.cuda.mem_get_info)"
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
    return 0, "unknown"


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
    from .sweep.slurm_env import slurm_facts

    slurm = slurm_facts()
    if slurm["in_slurm"]:  # where a Slurm job ran: the ids sacct takes, the node, what it was given
        env.update(slurm_job=slurm["slurm_id"], slurm_nodelist=slurm["nodelist"],
                   slurm_partition=slurm["partition"], slurm_cpus=slurm["cpus"], slurm_gpus=slurm["gpus"])
    return env


# NVML clock-event ("throttle") reason bits, and the ones that mean the GPU was held back.
THROTTLE_REASONS = {0x1: "gpu_idle", 0x2: "applications_clocks_setting", 0x4: "sw_power_cap", 0x8: "hw_slowdown",
                    0x10: "sync_boost", 0x20: "sw_thermal_slowdown", 0x40: "hw_thermal_slowdown",
                    0x80: "hw_power_brake_slowdown", 0x100: "display_clock_setting"}
# Thermal and hardware slowdowns: the GPU was held back, the timing is flagged. The power cap
# is the normal state of a loaded GPU (an H200 under an fp16 matmul ran at its 700 W cap, SM
# clock 1095-1980 MHz): recorded, never a verdict by itself.
HELD_BACK = ("hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown")
POWER_MANAGED = ("sw_power_cap",)


def nvml_ids(device: torch.device) -> list[str]:
    """Ways to name this CUDA device to NVML, best first: its UUID, then its PCI
    bus id. NVML ignores CUDA_VISIBLE_DEVICES, so a CUDA index would name another
    GPU whenever that variable reorders or hides devices."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    ids = []
    uuid = str(getattr(props, "uuid", "") or "")
    if uuid:
        ids.append(("uuid", uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"))
    if getattr(props, "pci_bus_id", None) is not None:
        domain = getattr(props, "pci_domain_id", 0)
        ids.append(("pci", f"{domain:08X}:{props.pci_bus_id:02X}:{props.pci_device_id:02X}.0"))
    return ids


FAKE_NVML = "ELFATT_SUITE_FAKE_NVML"  # "1": a fake NVML (python -m suite.gpu_check --dry-run)


class FakeNvml:
    """NVML's calls as the suite makes them, with made-up readings that say they are fake (clock
    1980 MHz, 40 C, the power cap bit, 300 W of energy over time): for dry runs on a CPU only."""

    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 0, 1, 0

    def __init__(self):
        import time

        self._t0, self._time = time.perf_counter(), time.perf_counter

    def nvmlDeviceGetClockInfo(self, handle, which):  # noqa: N802 - NVML's names
        return 1980 if which == self.NVML_CLOCK_SM else 3201

    def nvmlDeviceGetTemperature(self, handle, which):  # noqa: N802
        return 40

    def nvmlDeviceGetEnforcedPowerLimit(self, handle):  # noqa: N802
        return 700_000

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle):  # noqa: N802
        return 0x4

    def nvmlDeviceGetComputeRunningProcesses(self, handle):  # noqa: N802
        return []

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):  # noqa: N802
        return (self._time() - self._t0) * 300_000.0  # mJ at 300 W

    def nvmlSystemGetDriverVersion(self):  # noqa: N802
        return "fake"


class Nvml:
    """GPU clocks, power, energy, throttle reasons and other processes through
    NVML, when there is a GPU and pynvml. The device is found by UUID (or PCI
    bus id), never by CUDA index.

    Every method returns {} / None rather than raising: these are annotations
    of a measurement, never a reason to lose it.
    """

    def __init__(self, device: torch.device):
        self.handle = None
        if os.environ.get(FAKE_NVML) == "1":  # gpu_check --dry-run: the plumbing of the GPU columns on a CPU
            self._nv, self.handle = FakeNvml(), "fake"
            return
        if device.type != "cuda":
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nv = pynvml
            for kind, ident in nvml_ids(device):
                with contextlib.suppress(Exception):
                    get = pynvml.nvmlDeviceGetHandleByUUID if kind == "uuid" else pynvml.nvmlDeviceGetHandleByPciBusId
                    self.handle = get(ident)
                    break
        except Exception:  # noqa: BLE001 - NVML missing or broken: the GPU columns stay empty
            self.handle = None

    def sm_clock_and_temp(self) -> tuple[float, float] | None:
        """The SM clock (MHz) and temperature (C) now: the two readings sampled during a timed loop."""
        if self.handle is None:
            return None
        nv = self._nv
        try:
            return (nv.nvmlDeviceGetClockInfo(self.handle, nv.NVML_CLOCK_SM),
                    nv.nvmlDeviceGetTemperature(self.handle, nv.NVML_TEMPERATURE_GPU))
        except Exception:  # noqa: BLE001
            return None

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

    def throttle_reasons(self) -> int | None:
        """The current clock-event reason bits (THROTTLE_REASONS), or None."""
        if self.handle is None:
            return None
        for name in ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"):
            with contextlib.suppress(Exception):
                return int(getattr(self._nv, name)(self.handle))
        return None

    def other_processes(self) -> int | None:
        """Compute processes on this GPU other than this one, or None."""
        if self.handle is None:
            return None
        try:
            procs = self._nv.nvmlDeviceGetComputeRunningProcesses(self.handle)
        except Exception:  # noqa: BLE001
            return None
        return sum(1 for p in procs if getattr(p, "pid", None) != os.getpid())

    def energy_mj(self) -> float | None:
        if self.handle is None:
            return None
        try:
            return float(self._nv.nvmlDeviceGetTotalEnergyConsumption(self.handle))
        except Exception:  # noqa: BLE001 - not every GPU reports energy
            return None


def reason_names(bits: int) -> list[str]:
    return [name for bit, name in THROTTLE_REASONS.items() if bits & bit]
