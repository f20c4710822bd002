"""Host cost of the fast ELFATT path with the GPU work stubbed out, on this CPU:

    python -m benchmarks.host_overhead [--res 1024] [--calls 200] [--repeats 5] [--before REF]

Per call of the layer's ``attend`` (what the harness times) it counts Triton
kernel launches, torch kernels (aten ops that compute: copies, fills, casts,
arithmetic), tensor allocations (aten ops returning new storage) and the host
microseconds (CPU time of the calling thread, so that a busy neighbour on a
shared machine does not count), for the fast forward (inference mode) and forward + backward
(``torch.autograd.backward`` of q, k, v), beside torch SDPA's fused-op
dispatch (one fused op forward, one backward, as cuDNN's path is) on the same
shapes. ViT-B/16 attention: 12 heads x 64, 6 global + 6 local, batch 1.

How the GPU is stubbed, faithfully for the Python composition: every tensor
is on the ``meta`` device (shapes, strides and dtypes, no memory, no compute),
and triton's active driver is replaced by a fake one for sm_90 whose launcher
counts and returns. Triton's own launch path (argument binding,
specialisation, the kernel-cache lookup) therefore runs exactly as on a GPU;
the kernels are compiled for sm_90 on the first call (triton's disk cache
keeps them), only ``cuLaunchKernel`` itself is not run. The device checks
(``_reasons``: a fast path needs CUDA) and the SM count (132, an H100/H200)
are patched. Counts come from one instrumented call (a TorchDispatchMode);
times from calls without it.

``--before REF``: also run this script on the code of git revision REF
(extracted with ``git archive`` into a temporary folder) and print both.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIM, HEADS, PATCH = 768, 12, 16


class FakeLauncher:
    """Stands in for triton's CUDA launcher: counts launches, runs nothing."""

    launches = 0

    def __init__(self, src, metadata):
        self.src, self.metadata = src, metadata

    def __call__(self, *args, **kwargs):
        FakeLauncher.launches += 1


class FakeUtils:
    def load_binary(self, name, kernel, shared, device):
        return object(), 1, 0, 0, 1024  # module, function, registers, spills, max threads

    def get_device_properties(self, device):
        return {"max_shared_mem": 232448, "multiprocessor_count": 132, "max_num_regs": 65536, "warpSize": 32,
                "sm_clock_rate": 1980000, "mem_clock_rate": 3201000, "mem_bus_width": 5120}


class FakeDriver:
    """triton's active driver for an sm_90 device that launches nothing."""

    launcher_cls = FakeLauncher

    def __init__(self):
        self.utils = FakeUtils()

    def get_current_device(self):
        return 0

    def set_current_device(self, device):
        pass

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", 90, 32)

    def get_active_torch_device(self):
        import torch

        return torch.device("meta")

    def is_active(self):
        return True


def stub_gpu():
    """Install the fake driver and patch the fast path's device checks; returns what was patched."""
    from triton.runtime import driver

    from attentions.kernels import elfatt_fast as ef

    driver.set_active(FakeDriver())
    os.environ.pop("TRITON_INTERPRET", None)
    ef._reasons = lambda *a, **k: ()
    ef._sm_count = lambda device: 132
    import attentions.elfatt as layer

    state = layer._autocast_state  # meta has no autocast state: ask what a CUDA call asks
    layer._autocast_state = lambda device_type: state("cuda")
    return ef


def counting_mode():
    """A TorchDispatchMode that counts torch kernels and allocations (new storage) per aten op."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.kernels, self.allocs, self.ops = 0, 0, []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            rets = func._schema.returns
            aliasing = [r.alias_info is not None for r in rets]
            views = rets and all(aliasing) and not any(r.alias_info.is_write for r in rets if r.alias_info)
            self.allocs += sum(1 for a in aliasing if not a) if rets else 0
            factory = str(func).split(".")[1].startswith(("empty", "new_empty"))
            if not views and not factory:
                self.kernels += 1
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    return Count()


def make_calls(res: int, batch: int = 1):
    """{name: fn} for the fast ELFATT layer and SDPA's fused op, fwd and fwd+bwd, on meta tensors."""
    import torch

    import attentions

    ef = stub_gpu()
    hw = (res // PATCH, res // PATCH)
    n = hw[0] * hw[1]
    torch.manual_seed(0)
    m = attentions.create_attention("elfatt", DIM, HEADS, impl="fast").to("meta", torch.float16)
    qkv = torch.empty(batch, n, 3 * DIM, device="meta", dtype=torch.float16)
    q, k, v = qkv.view(batch, n, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4).unbind(0)
    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
    grad = torch.empty(q.shape, device="meta", dtype=q.dtype)
    sq, sk, sv = (torch.empty(q.shape, device="meta", dtype=q.dtype) for _ in range(3))
    sqg, skg, svg = (t.detach().requires_grad_() for t in (sq, sk, sv))
    sdpa_op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu

    def fast_fwd():
        with torch.inference_mode():
            return m.attend(q, k, v, hw)

    def fast_fwd_bwd():
        for t in (qg, kg, vg):
            t.grad = None
        torch.autograd.backward(m.attend(qg, kg, vg, hw), grad, inputs=[qg, kg, vg])

    def sdpa_fwd():
        with torch.inference_mode():
            return sdpa_op(sq, sk, sv)[0]

    def sdpa_fwd_bwd():
        for t in (sqg, skg, svg):
            t.grad = None
        torch.autograd.backward(sdpa_op(sqg, skg, svg)[0], grad, inputs=[sqg, skg, svg])

    return ef, {"fast fwd": fast_fwd, "fast fwd+bwd": fast_fwd_bwd, "sdpa fwd": sdpa_fwd, "sdpa fwd+bwd": sdpa_fwd_bwd}


def measure(res: int, calls: int, repeats: int) -> list[dict]:
    import torch

    _, fns = make_calls(res)
    rows = []
    for name, fn in fns.items():
        for _ in range(3):  # compiles (first call) and fills every cache
            fn()
        FakeLauncher.launches = 0
        with counting_mode() as mode:
            fn()
        launches = FakeLauncher.launches
        per_call = []  # CPU time of this thread: a neighbour that takes the core away is not counted
        for _ in range(repeats):
            t0 = time.thread_time()
            for _ in range(calls):
                fn()
            per_call.append((time.thread_time() - t0) / calls * 1e6)
        rows.append({"path": name, "triton_launches": launches, "torch_kernels": mode.kernels, "allocs": mode.allocs,
                     "host_us": statistics.median(per_call), "host_us_min": min(per_call),
                     "torch_ops": list(mode.ops), "threads": torch.get_num_threads()})
    return rows


def interleaved(trees: list[tuple[str, Path]], res: int, calls: int, repeats: int, rounds: int) -> list:
    """Each tree measured ``rounds`` times, alternately (a busy neighbour then slows both alike);
    per path the least per-call time over all rounds and repeats, and the median of the rounds' medians."""
    runs = {label: [] for label, _ in trees}
    for _ in range(rounds):
        for label, tree in trees:
            runs[label].append(run_tree(tree, res, calls, repeats))
    out = []
    for label, _ in trees:
        rows = runs[label][0]
        for i, r in enumerate(rows):
            r["host_us_min"] = min(run[i]["host_us_min"] for run in runs[label])
            r["host_us"] = statistics.median(run[i]["host_us"] for run in runs[label])
        out.append((label, rows))
    return out


def run_tree(tree: Path, res: int, calls: int, repeats: int) -> list[dict]:
    """This script's ``measure`` on the code in ``tree``, in a fresh process."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    env.pop("TRITON_INTERPRET", None)
    p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--json", "--res", str(res), "--calls",
                        str(calls), "--repeats", str(repeats)], cwd=tree, env=env, capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(f"measuring {tree} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def table(rows: list[dict], label: str = "") -> list[str]:
    lines = [f"| {'code | ' if label else ''}path | Triton launches | torch kernels | allocations | "
             "host us/call (least) | host us/call (median) |",
             f"|{'---|' if label else ''}---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {label + ' | ' if label else ''}{r['path']} | {r['triton_launches']} | {r['torch_kernels']} | "
                     f"{r['allocs']} | {r['host_us_min']:.0f} | {r['host_us']:.0f} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--res", type=int, default=1024)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3, help="alternate the measured trees this many times")
    ap.add_argument("--before", help="a git revision: also measure its code and print both")
    ap.add_argument("--json", action="store_true", help="print the rows as one JSON line")
    ap.add_argument("--ops", action="store_true", help="list the torch ops of each path")
    a = ap.parse_args(argv)
    if a.json:
        sys.path.insert(0, os.getcwd())
        print(json.dumps(measure(a.res, a.calls, a.repeats)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        trees = [("now", ROOT)]
        if a.before:
            archive = subprocess.run(["git", "archive", a.before], cwd=ROOT, capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
            trees.insert(0, (f"before ({a.before})", Path(tmp)))
        sets = interleaved(trees, a.res, a.calls, a.repeats, a.rounds)
    import torch

    print(f"# Host cost per call, {a.res} px (ViT-B/16 attention, batch 1, fp16), GPU stubbed; "
          f"{a.rounds} rounds x {a.repeats} x {a.calls} calls; torch {torch.__version__}, "
          f"{sets[-1][1][0]['threads']} threads")
    lines = []
    for i, (label, rows) in enumerate(sets):
        lines += table(rows, label)[(2 if i else 0):]
    print("\n".join(lines))
    if a.ops:
        for label, rows in sets:
            for r in rows:
                print(f"{label} {r['path']}: {' '.join(r['torch_ops'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
