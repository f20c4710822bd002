"""Training cost: direction=bwd / fwd_bwd for every attention, backward FLOPs by
one convention (and counted), gradient accuracy, memory with saved tensors."""
import json
import math

import pytest

import attentions as A

TINY = ["device=cpu", "precision=fp32", "workload.dim=32", "workload.heads=2", "warmup=1", "repeats=3", "min_time_s=0.01",
        "resolution=112", "retries=0"]


@pytest.mark.parametrize("name", A.list_attentions())
@pytest.mark.parametrize("workload", ["op", "layer"])
def test_every_attention_trains_or_says_why_not(run_job, tmp_path, name, workload):
    (row,) = run_job([f"attention={name}", f"workload={workload}", "direction=fwd_bwd", *TINY], tmp_path)
    assert row.direction == "fwd_bwd"
    assert row.status in ("ok", "unsupported", "unavailable"), row.reason
    if row.status != "ok":
        assert row.reason  # e.g. FlexAttention has no backward on CPU: the row says so
        return
    assert row.latency_ms_p50 > 0 and row.peak_mem_mib > 0 and row.saved_mib > 0
    assert row.flops_analytic > 0 and row.grad_rel_err_vs_fp64 < 1e-4, row.grad_errors
    errors = json.loads(row.grad_errors)
    expected = {"dq", "dk", "dv"} if workload == "op" else {"dx", "dqkv.weight", "dproj.weight"}
    assert expected <= set(errors["fp64"])
    if A.attention_info(name).cls.exact:
        assert row.grad_rel_err_vs_exact < 1e-4 and "exact" in errors


@pytest.mark.parametrize("name,workload,direction", [
    ("vanilla", "op", "bwd"), ("efficient_linear", "layer", "fwd_bwd"), ("linear_elu", "layer", "bwd"),
    ("elfatt", "layer", "fwd_bwd"), ("sdpa", "op", "bwd"),
])
def test_backward_flops_analytic_equal_counted(run_job, tmp_path, name, workload, direction):
    """On paths of matmuls, convolutions and SDPA (whose CPU kernels get formulas
    that count the scores recomputed), the convention and the counter agree."""
    (row,) = run_job([f"attention={name}", f"workload={workload}", f"direction={direction}", *TINY], tmp_path)
    assert row.status == "ok", row.reason
    assert row.flops_counted == row.flops_analytic


def test_backward_flops_follow_the_convention():
    m = A.create_attention("vanilla", 32, 2)
    assert m.backward_flops(2, (7, 7), "attend") == 2 * m.flops(2, (7, 7), "attend")
    s = A.create_attention("sdpa", 32, 2)  # fused: QK^T is recomputed, half the forward core
    assert s.backward_flops(2, (7, 7), "attend") == 2 * s.flops(2, (7, 7), "attend") + s.core_flops(2, (7, 7)) // 2
    assert A.create_attention("sdpa", 32, 2, impl="math").score_recompute_flops(2, (7, 7)) == 0


def test_bwd_times_the_backward_alone_and_counts_saved_tensors(run_job, tmp_path):
    fwd, bwd = (run_job(["attention=vanilla", "workload=op", f"direction={d}", *TINY], tmp_path / d)[0]
                for d in ("fwd", "bwd"))
    assert bwd.flops_analytic == 2 * fwd.flops_analytic
    assert bwd.saved_mib > 0 and bwd.mem_method.endswith("+saved_tensors")
    assert bwd.peak_mem_mib >= bwd.saved_mib
    assert math.isnan(fwd.saved_mib) and fwd.direction == "fwd"


def test_direction_is_part_of_the_case(run_job, tmp_path):
    from suite.records import case_key

    a = run_job(["attention=vanilla", "direction=bwd", *TINY], tmp_path / "a")[0]
    b = run_job(["attention=vanilla", "direction=fwd_bwd", *TINY], tmp_path / "b")[0]
    assert case_key(a.row()) != case_key(b.row())


def test_train_proxy_refuses_a_direction(run_job, tmp_path):
    from suite.config import BadInput

    with pytest.raises(BadInput, match="direction=bwd applies to the timed workloads; workload=train_proxy always"):
        run_job(["workload=train_proxy", "direction=bwd", *[t for t in TINY if not t.startswith("workload.")]],
                tmp_path)
