"""The measuring primitives: timing statistics, CPU peak memory, FLOP counting, accuracy."""
import math

import pytest
import torch
import torch.nn.functional as F

import attentions as A
from suite import accuracy as acc
from suite.flops import count_flops
from suite.measure import peak_memory, quantile, sdpa_kernels, time_fn

CPU = torch.device("cpu")


def test_quantiles_interpolate():
    s = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert quantile(s, 0.5) == 3.0
    assert quantile(s, 0.1) == pytest.approx(1.4)
    assert quantile(s, 0.9) == pytest.approx(4.6)


def test_time_fn_counts_calls_and_orders_percentiles():
    calls = []
    t = time_fn(lambda: calls.append(1), CPU, warmup=2, repeats=7)
    assert len(calls) == 9 and t.repeats == 7
    assert 0 <= t.p10_ms <= t.p50_ms <= t.p90_ms


def test_time_fn_auto_repeats_fill_min_time():
    t = time_fn(lambda: None, CPU, warmup=1, repeats=0, min_time_s=0.001, max_repeats=50)
    assert 5 <= t.repeats <= 50


def test_cpu_peak_memory_sees_torch_allocations():
    n = 1 << 20  # 1 Mi float32 = 4 MiB each

    def two_live_then_one():
        a = torch.ones(n)
        b = torch.ones(n)
        del a
        c = torch.ones(n)
        return b, c

    mem = peak_memory(two_live_then_one, CPU)
    assert mem.peak_mib == pytest.approx(8.0, abs=0.1)  # never 3 alive at once
    assert mem.method == "cpu_profiler_allocations"


def test_count_flops_sees_cpu_sdpa():
    q = torch.randn(2, 3, 16, 8)
    assert count_flops(lambda: F.scaled_dot_product_attention(q, q, q)) == 4 * 2 * 3 * 16 * 16 * 8


def test_sdpa_kernels_names_the_backend_that_ran():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(2, 3, 16, 8)
    assert sdpa_kernels(lambda: F.scaled_dot_product_attention(q, q, q)) == {"flash_cpu"}

    def math():
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, q, q)

    assert sdpa_kernels(math) == {"math"}
    assert sdpa_kernels(lambda: q @ q.transpose(-2, -1)) == set()


def test_exact_reference_chunks_agree():
    q, k, v = (torch.randn(1, 2, 50, 4, dtype=torch.float64) for _ in range(3))
    whole = acc.exact_attention_fp64(q, k, v, chunk=1000)
    torch.testing.assert_close(acc.exact_attention_fp64(q, k, v, chunk=7), whole)
    torch.testing.assert_close(whole, F.scaled_dot_product_attention(q, k, v))


def test_accuracy_of_exact_attention_is_rounding_only():
    torch.manual_seed(0)
    m = A.create_attention("vanilla", 16, 2)
    x = torch.randn(2, 12, 16)
    with torch.no_grad():
        out = m(x, (3, 4))
    a = acc.accuracy(m, out, (x,), (3, 4), "full")
    assert a.rel_err_vs_exact < 1e-6 and a.rel_err_vs_fp64 < 1e-6
    assert a.cos_sim_vs_exact == pytest.approx(1.0, abs=1e-9)


def test_accuracy_sees_approximation():
    torch.manual_seed(0)
    m = A.create_attention("efficient_linear", 16, 2)
    q, k, v = (torch.randn(1, 2, 12, 8) for _ in range(3))
    with torch.no_grad():
        out = m.attend(q, k, v, (3, 4))
    a = acc.accuracy(m, out, (q, k, v), (3, 4), "attend")
    assert a.rel_err_vs_exact > 1e-2  # a different function
    assert a.rel_err_vs_fp64 < 1e-6  # but a correct implementation of itself
    assert not math.isnan(a.cos_sim_vs_exact)


def test_min_time_is_a_floor_when_the_estimate_was_slow():
    """repeats=0: the calls the estimate saw were slow (a busy machine), the timed ones fast; the
    loop still runs until min_time_s has passed instead of stopping at the estimated count."""
    import time

    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.02 if len(calls) <= 8 else 0.001)  # warmup and the estimate: 20 ms a call

    t = time_fn(fn, torch.device("cpu"), warmup=1, repeats=0, min_time_s=0.3)
    assert t.total_s >= 0.3 and t.repeats > 30, (t.total_s, t.repeats)
    fixed = time_fn(fn, torch.device("cpu"), warmup=0, repeats=7, min_time_s=10)
    assert fixed.repeats == 7  # an explicit count is exactly that
