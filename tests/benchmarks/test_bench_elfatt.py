"""The fast-ELFATT benchmark: its tables and target verdicts on a made-up
measurement (the measuring itself needs a GPU), and its refusal without one."""
import pandas as pd
import pytest
import torch

from benchmarks import elfatt_fast as bench


def measured(fast_ms: dict, sdpa_ms: dict, direction="fwd") -> pd.DataFrame:
    rows = []
    for res, ms in fast_ms.items():
        base = {"resolution": res, "batch": bench.RES_BATCH[res], "dtype": "fp16", "status": "ok", "tuning": "{}",
                "direction": direction, "out_mib": 10.0, "floor_ms": ms / 2, "beyond_inputs_mib": 12.0,
                "rel_err_fp64": 1e-3}
        rows.append({**base, "variant": "fast", "ms_p50": ms})
        rows.append({**base, "variant": "reference", "ms_p50": ms * 3})
        rows += [{**base, "variant": s, "ms_p50": sdpa_ms[res] * (1 + i)} for i, s in enumerate(bench.SDPA)]
        rows.append({**base, "variant": "fast_sdpa", "status": "error: not here", "ms_p50": float("nan")})
    return pd.DataFrame(rows)


def test_verdicts_follow_the_targets():
    df = pd.concat([measured({3072: 0.5, 2048: 0.5, 1024: 0.2, 224: 0.2}, {3072: 9.0, 2048: 1.0, 1024: 0.1, 224: 0.2}),
                    measured({3072: 1.0, 2048: 1.0, 1024: 0.1}, {3072: 20.0, 2048: 2.0, 1024: 0.1}, "fwd_bwd")])
    got = {t: (m, v) for t, m, v in bench.verdicts(df)}
    assert got["3072 px: fast p50 <= 0.6 ms"] == ("0.500 ms", "met")
    assert got["2048 px: >= 3x the fastest SDPA"] == ("2.00x", "missed")
    assert got["1024 px: no slower than the fastest SDPA"] == ("0.50x", "missed")
    assert got["224 px, batch 256: within 1.1x of the fastest SDPA"][1] == "met"
    assert got["3072 px: memory beyond inputs <= 2x the output"] == ("1.20x", "met")
    assert got["fwd+bwd, 3072 px: >= 10x the fastest SDPA"] == ("20.00x", "met")
    lines = bench.table(df)
    assert lines[0].startswith("| res | batch | dtype | direction |") and len(lines) == 2 + 7
    assert any("| error |" in line or "error" in line for line in lines)


def test_a_target_without_rows_is_owed():
    got = bench.verdicts(measured({1024: 0.2}, {1024: 0.1}))
    assert ("3072 px: fast p50 <= 0.6 ms", "not measured", "owed") in got


def test_bench_without_cuda_exits_cleanly(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the message is for machines without it")
    assert bench.main([]) == 1
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "Traceback" not in err
