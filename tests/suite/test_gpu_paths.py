"""GPU-only code paths, checked on the CPU with faked devices: NVML finds the
GPU by UUID, energy covers the timed calls alone, amp gives every attention
the same inputs, the model's latency shares flush L2, gpu_check refuses
without CUDA."""
import math
import types

import pytest
import torch

import attentions as A
from suite import device as D
from suite import measure as M


class FakeNvml(types.SimpleNamespace):
    """pynvml with two GPUs, known by UUID and by index."""

    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 0, 1, 0

    def __init__(self):
        super().__init__(asked=[])
        self.gpus = {"GPU-aaaa": "gpu0", "GPU-bbbb": "gpu1"}

    def nvmlInit(self):
        pass

    def nvmlDeviceGetHandleByIndex(self, i):
        self.asked.append(("index", i))
        return list(self.gpus.values())[i]

    def nvmlDeviceGetHandleByUUID(self, uuid):
        self.asked.append(("uuid", uuid))
        return self.gpus[uuid]

    def nvmlDeviceGetHandleByPciBusId(self, bus):
        self.asked.append(("pci", bus))
        raise RuntimeError("not reached")

    def nvmlDeviceGetClockInfo(self, handle, which):
        return {"gpu0": 1000, "gpu1": 1980}[handle]

    nvmlDeviceGetEnforcedPowerLimit = staticmethod(lambda h: 700_000)
    nvmlDeviceGetTemperature = staticmethod(lambda h, s: 40)
    nvmlSystemGetDriverVersion = staticmethod(lambda: "580.0")
    nvmlDeviceGetCurrentClocksEventReasons = staticmethod(lambda h: 0x4 | 0x1)
    nvmlDeviceGetComputeRunningProcesses = staticmethod(lambda h: [types.SimpleNamespace(pid=1)])


def test_nvml_finds_the_gpu_cuda_sees_by_uuid_not_by_index(monkeypatch):
    """CUDA_VISIBLE_DEVICES=1 makes physical GPU 1 CUDA's device 0; NVML, which
    ignores that variable, must be asked for GPU 1 (by UUID), never index 0."""
    fake = FakeNvml()
    monkeypatch.setitem(__import__("sys").modules, "pynvml", fake)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: types.SimpleNamespace(uuid="bbbb", pci_bus_id=0x41, pci_device_id=0, pci_domain_id=0))
    nv = D.Nvml(torch.device("cuda"))
    assert nv.handle == "gpu1" and fake.asked == [("uuid", "GPU-bbbb")]
    assert nv.clocks()["gpu_sm_clock_mhz"] == 1980
    assert D.reason_names(nv.throttle_reasons()) == ["gpu_idle", "sw_power_cap"] and nv.other_processes() == 1


def test_nvml_falls_back_to_the_pci_bus_id(monkeypatch):
    fake = FakeNvml()
    fake.nvmlDeviceGetHandleByPciBusId = lambda bus: fake.asked.append(("pci", bus)) or "gpu1"
    monkeypatch.setitem(__import__("sys").modules, "pynvml", fake)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: types.SimpleNamespace(uuid="", pci_bus_id=0x41, pci_device_id=0, pci_domain_id=0))
    assert D.Nvml(torch.device("cuda")).handle == "gpu1" and fake.asked == [("pci", "00000000:41:00.0")]


def test_energy_covers_the_timed_calls_alone():
    """The loop's energy less that of as many L2 scrubs run alone; warmup excluded."""
    readings = iter([5000.0, 5000.0, 6000.0])  # mJ: loop end, scrubs start, scrubs end (loop start: 1000)
    joules = M._calls_energy(lambda: next(readings), 1000.0, torch.device("cpu"), 3, scrubbed=True)
    assert joules == pytest.approx((5000 - 1000) / 1e3 - (6000 - 5000) / 1e3)
    readings = iter([1000.0, 4000.0])
    assert M._calls_energy(lambda: next(readings), next(readings), torch.device("cpu"), 3, False) == pytest.approx(3.0)
    t = M.time_fn(lambda: None, torch.device("cpu"), warmup=2, repeats=4, energy=iter([10.0, 30.0]).__next__)
    assert t.energy_j == pytest.approx(0.02) and t.busy_s >= 0  # no scrub on the CPU
    assert math.isnan(M.time_fn(lambda: None, torch.device("cpu"), repeats=3).energy_j)


@pytest.mark.parametrize("name", A.list_attentions())
def test_amp_op_gives_every_attention_the_same_inputs(run_job, tmp_path, monkeypatch, name):
    """Under precision=amp the op workload hands q, k, v in the autocast dtype to
    every attention (bf16 on the CPU), whether or not its kernels autocast."""
    from suite.workloads.op import Op

    seen = []
    real = Op.callable

    def spy(self, module, inputs, hw, device, precision):  # what the timed call hands to module.attend
        seen.append(tuple(t.dtype for t in inputs))
        return real(self, module, inputs, hw, device, precision)

    monkeypatch.setattr(Op, "callable", spy)
    (row,) = run_job([f"attention={name}", "workload=op", "precision=amp", "device=cpu", "workload.dim=32", "workload.heads=2",
                      "resolution=112", "warmup=1", "repeats=2", "min_time_s=0.01", "accuracy=false", "retries=0",
                      "flops_count=false"], tmp_path)
    if row.status != "ok":
        pytest.skip(f"{name}: {row.status}: {row.reason}")
    assert seen and set(seen) == {(torch.bfloat16,) * 3}


def test_latency_shares_flush_l2_like_the_main_timing(monkeypatch):
    from suite.models.config import ModelConfig
    from suite.models import build_model, plan_model
    from suite.workloads import model as W

    flushes = []

    def fake_time(fn, device, **kw):
        flushes.append(kw.get("flush_l2"))
        return M.Timing(1.0, 1.0, 1.0, 1, 0.0, 0.0)

    monkeypatch.setattr(W, "time_fn", fake_time)
    mc = ModelConfig(name="vit_t", embed_dim=24, depths=[1], heads=[3])
    model = build_model(plan_model(mc, "sdpa", {}, 64))
    cfg = types.SimpleNamespace(repeats=1, min_time_s=0.01, flush_l2=False)
    W.latency_shares(model, lambda: model(torch.randn(1, 3, 64, 64)), torch.device("cpu"), cfg, rounds=1)
    assert flushes == [False, False, False]


def test_gpu_check_refuses_without_cuda(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the refusal is for machines without it")
    from suite import gpu_check

    assert gpu_check.main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: suite.gpu_check needs a CUDA GPU") and len(err.strip().splitlines()) == 1
