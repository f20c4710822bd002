"""The report's figures read right: flagged timings ringed everywhere a timing is drawn (a speedup
too when its baseline was flagged), directions and precisions never joined by a line, measured
resolutions as x ticks whose labels never collide, the claim bands in the legend, many variants
told apart."""
import itertools

import matplotlib

matplotlib.use("Agg")
import matplotlib.colors as mc  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from suite import collect as C  # noqa: E402
from suite import figures as F  # noqa: E402
from suite import report as R  # noqa: E402
from suite.figure_style import (FLAG_SPEEDUP_TEXT, FLAG_TEXT, PAPER_BANDS, RING_GID, fit_tick_labels,  # noqa: E402
                                resolution_axis, variant_styles)
from suite.records import write_records  # noqa: E402
from test_report import SDPA_FLASH, row  # noqa: E402  (tests/suite is on sys.path under pytest)


@pytest.fixture
def drawn(monkeypatch):
    """Every figure write_report makes, by name, laid out as saved but not written."""
    figs = {}

    def keep(self, fig, name, caption):
        fig.tight_layout()
        fit_tick_labels(fig)
        figs[name] = fig
        self.written.append((self.out / f"{name}.png", caption))

    monkeypatch.setattr(F.Figures, "save", keep)
    yield figs
    plt.close("all")


def table(tmp_path, rows) -> pd.DataFrame:
    write_records(rows, tmp_path / "sweep")
    return R.load_results(C.collect([tmp_path / "sweep"]))


def legend_texts(fig) -> list[str]:
    return [t.get_text() for leg in fig.legends for t in leg.get_texts()]


def rings(ax) -> list[tuple]:
    return [(x, y) for line in ax.get_lines() if line.get_gid() == RING_GID for x, y in zip(*line.get_data())]


def test_pareto_latency_and_precision_figures_ring_flagged_timings(tmp_path, drawn):
    rows = [row("vanilla", latency=10.0, dtype=d) for d in ("fp16", "bf16")]
    rows += [row("elfatt", latency=2.0, dtype="fp16", timing_quality="contended"),
             row("elfatt", latency=2.5, dtype="bf16", timing_quality="ok")]
    R.write_report(table(tmp_path, rows), tmp_path / "out")
    flagged_throughput = 1e3 / 2.0
    pareto = next(f for n, f in drawn.items() if n.startswith("pareto"))
    assert any(x == pytest.approx(flagged_throughput) for ax in pareto.axes for x, _ in rings(ax))
    assert sum(len(rings(ax)) for ax in pareto.axes) == 1 and FLAG_TEXT in legend_texts(pareto)
    latency = next(f for n, f in drawn.items() if n.startswith("latency"))
    assert sum(len(rings(ax)) for ax in latency.axes) == 1 and FLAG_TEXT in legend_texts(latency)
    precision = next(f for n, f in drawn.items() if n.startswith("precision"))
    assert sum(len(rings(ax)) for ax in precision.axes) == 1  # the latency panel; errors are not timings
    memory = next(f for n, f in drawn.items() if n.startswith("memory"))
    assert sum(len(rings(ax)) for ax in memory.axes) == 0 and FLAG_TEXT not in legend_texts(memory)


def test_a_speedup_from_a_flagged_baseline_is_ringed_and_starred(tmp_path, drawn):
    rows = [row("vanilla", latency=10.0, resolution=r, timing_quality="noisy" if r == 1024 else "ok")
            for r in (512, 1024)]
    rows += [row("elfatt", latency=2.0, resolution=r, timing_quality="ok") for r in (512, 1024)]
    path = R.write_report(table(tmp_path, rows), tmp_path / "out")
    fig = next(f for n, f in drawn.items() if n.startswith("speedup"))
    ax = next(a for a in fig.axes if "over vanilla_lepe" in a.get_title())
    assert rings(ax) == [(1024, pytest.approx(5.0))]  # elfatt's own row is ok: its baseline's is not
    assert FLAG_SPEEDUP_TEXT in legend_texts(fig)
    assert "| elfatt | 5.00 | 5.00* |" in path.read_text()


def test_claim_bands_are_in_the_legend(tmp_path, drawn):
    rows = [row("vanilla", latency=10.0), row("sdpa", SDPA_FLASH, latency=4.0), row("elfatt", latency=2.0)]
    R.write_report(table(tmp_path, rows), tmp_path / "out")
    texts = legend_texts(next(f for n, f in drawn.items() if n.startswith("speedup")))
    assert all(band[2] in texts for band in PAPER_BANDS.values())


def test_no_line_mixes_directions_or_precisions(tmp_path, drawn):
    rows = []
    for res in (512, 1024):
        for direction, scale in (("fwd", 1.0), ("fwd_bwd", 3.0)):
            for dtype in ("fp16", "bf16"):
                rows += [row("vanilla", latency=10.0 * scale, resolution=res, direction=direction, dtype=dtype),
                         row("elfatt", latency=2.0 * scale, resolution=res, direction=direction, dtype=dtype)]
    df = table(tmp_path, rows)
    R.write_report(df, tmp_path / "out")
    words = {"fwd": "forward", "fwd_bwd": "forward+backward"}
    for name in ("latency__gpu-a", "speedup__gpu-a__fp16"):
        for ax in [a for a in drawn[name].axes if a.get_visible()]:
            title = ax.get_title()
            direction = "fwd_bwd" if words["fwd_bwd"] in title else "fwd"
            assert words[direction] in title and any(d in title for d in ("fp16", "bf16")), title
            for line in ax.get_lines():
                if line.get_label() == "elfatt" and name.startswith("latency"):
                    assert list(line.get_ydata()) == [2.0 * (3.0 if direction == "fwd_bwd" else 1.0)] * 2, title


def test_tick_labels_are_the_measured_resolutions_and_never_collide():
    res = [224, 256, 384, 448, 512, 768, 1024, 1536, 2048, 3072, 4096, 5000, 10000]
    fig, ax = plt.subplots(figsize=(5.2, 3.9))
    ax.plot(res, range(len(res)))
    resolution_axis(ax, res)
    fig.tight_layout()
    fit_tick_labels(fig)
    renderer = fig.canvas.get_renderer()
    shown = [t for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]
    boxes = sorted((t.get_window_extent(renderer) for t in shown), key=lambda b: b.x0)
    assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:])), "tick labels overlap"
    texts = [t.get_text() for t in shown]
    assert set(texts) <= {str(r) for r in res} and texts[0] == "224" and texts[-1] == "10000"
    assert len(texts) >= 5
    plt.close(fig)


def test_many_variants_are_told_apart(tmp_path, drawn):
    names = [f"variant_{i:02d}" for i in range(22)]
    styles = variant_styles(names)
    assert len({(s.color, s.marker, s.ls, s.filled) for s in styles.values()}) == len(names)
    for a, b in itertools.combinations(styles.values(), 2):
        close = sum((x - y) ** 2 for x, y in zip(mc.to_rgb(a.color), mc.to_rgb(b.color))) ** 0.5 < 0.25
        if close:  # a colour reused: line style and marker tell them apart
            assert a.ls != b.ls and a.marker != b.marker
    rows = [row("elfatt", {"k": i}, variant=v, latency=1.0 + i, resolution=r)
            for i, v in enumerate(names) for r in (512, 1024)]
    R.write_report(table(tmp_path, rows), tmp_path / "out")
    ax = drawn["latency__gpu-a"].axes[0]
    drawn_styles = {(ln.get_color(), ln.get_linestyle(), ln.get_marker()) for ln in ax.get_lines()
                    if ln.get_label() in names}
    assert len(drawn_styles) == len(names)
