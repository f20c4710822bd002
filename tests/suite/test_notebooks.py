"""Every notebook runs top to bottom against the committed results; committed notebooks carry no outputs."""
import json
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="pip install -e .[dev] (nbformat, nbclient, ipykernel)")
nbclient = pytest.importorskip("nbclient", reason="pip install -e .[dev] (nbformat, nbclient, ipykernel)")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def execute(path: Path, env: dict[str, str] | None = None):
    nb = nbformat.read(path, as_version=4)
    old = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})  # the kernel inherits this process's environment
    try:
        nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                resources={"metadata": {"path": str(ROOT)}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def text_of(nb) -> str:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            out.append(o.get("text", ""))
            out.extend(str(v) for k, v in o.get("data", {}).items() if k.startswith("text/"))
    return "\n".join(out)


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {"paper_speedups.ipynb", "explore.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebooks_have_no_outputs(path):
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, f"strip outputs of {path.name}"
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "one papermill-style `parameters` cell"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_on_the_committed_reference(path):
    assert (ROOT / "results" / "reference" / "cpu" / "results.parquet").exists()
    nb = execute(path, {"ELFATT_RESULTS": "results/reference"})
    if path.name == "paper_speedups.ipynb":
        assert "not comparable (CPU" in text_of(nb)  # the committed reference is a CPU sweep


@pytest.mark.slow
def test_paper_notebook_verdicts_come_from_the_data(tmp_path):
    """A made-up GPU table where ELFATT is 5x vanilla and 1.5x flash: one claim agrees, one does not."""
    from suite.collect import collect
    from suite.records import write_records
    from test_report import SDPA_FLASH, row  # tests/ is on sys.path under pytest

    rows = []
    for res in (512, 1024, 2048):
        rows += [row("vanilla", resolution=res, latency=10.0), row("sdpa", SDPA_FLASH, resolution=res, latency=3.0),
                 row("elfatt", resolution=res, latency=2.0)]
    write_records(rows, tmp_path / "gpu")
    table = collect([tmp_path / "gpu"])
    nb = execute(ROOT / "notebooks" / "paper_speedups.ipynb", {"ELFATT_RESULTS": str(table)})
    text = text_of(nb)
    assert "agrees: measured 5.00-5.00x vs claimed 4-7x" in text
    assert "disagrees, slower than claimed: measured 1.50-1.50x vs claimed 2-3x" in text


SUMMARY = '''
import json as _json

def _summary(fig):
    axes = fig.axes
    legends = list(fig.legends) + [ax.get_legend() for ax in axes if ax.get_legend()]
    lines = [ln for ax in axes for ln in ax.get_lines() if not ln.get_label().startswith("_")]
    return {"legend": [t.get_text() for leg in legends for t in leg.get_texts()],
            "xticks": sorted({t.get_text() for ax in axes for t in ax.get_xticklabels()
                              if t.get_visible() and t.get_text()}),
            "rings": sum(ln.get_gid() == "flagged-ring" for ax in axes for ln in ax.get_lines()),
            "labels": sorted({ln.get_label() for ln in lines}),
            "styles": sorted({f"{ln.get_color()}|{ln.get_linestyle()}|{ln.get_marker()}|{ln.get_markerfacecolor()}"
                              for ln in lines})}

print("FIGURES=" + _json.dumps({k: _summary(f) for k, f in FIGURES.items()}))
'''


def figures_of(path: Path, env: dict[str, str]) -> tuple[dict, str]:
    """Run the notebook with one more cell that describes every figure it kept in FIGURES."""
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(SUMMARY))
    tmp = path.with_name(f".{path.stem}.summary.ipynb")
    nbformat.write(nb, tmp)
    try:
        text = text_of(execute(tmp, env))
    finally:
        tmp.unlink(missing_ok=True)
    line = next(x for x in text.splitlines() if x.startswith("FIGURES="))
    return json.loads(line.removeprefix("FIGURES=")), text


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_figures_read_right_on_the_reference(path):
    """Measured resolutions as ticks (not 2^8..2^10), one style per variant (20 of them in the
    reference), the claim bands and the red ring in the legend, flagged points ringed and said."""
    figs, text = figures_of(path, {"ELFATT_RESULTS": "results/reference"})
    assert figs, "the notebook draws no figure"
    for name, f in figs.items():
        assert set(f["xticks"]) <= {"224", "512", "1024"} and "224" in f["xticks"], (name, f["xticks"])
        assert len(f["styles"]) == len(f["labels"]), (name, f["labels"])  # no two variants alike
        assert f["rings"] > 0 and any(t.startswith("red ring") for t in f["legend"]), name
    assert "Warning:" in text and "flagged" in text
    if path.name == "paper_speedups.ipynb":
        legend = next(iter(figs.values()))["legend"]
        assert any("4-7x" in t for t in legend) and any("2-3x" in t for t in legend)
    else:
        assert len(next(iter(figs.values()))["labels"]) >= 18


@pytest.mark.slow
def test_paper_notebook_marks_a_speedup_from_a_contended_row(tmp_path):
    """A 61x speedup from a contended row is never shown without a warning."""
    from suite.collect import collect
    from suite.records import write_records
    from test_report import SDPA_FLASH, row

    rows = []
    for res in (1024, 2048):
        rows += [row("vanilla", resolution=res, latency=61.0), row("sdpa", SDPA_FLASH, resolution=res, latency=3.0),
                 row("elfatt", resolution=res, latency=1.0, timing_quality="contended" if res == 2048 else "ok")]
    write_records(rows, tmp_path / "gpu")
    table = str(collect([tmp_path / "gpu"]))
    figs, text = figures_of(ROOT / "notebooks" / "paper_speedups.ipynb", {"ELFATT_RESULTS": table})
    assert "Warning: 2 speedup(s)" in text and "2048 px: contended" in text  # over vanilla and over flash
    assert "61.00-61.00x vs claimed 4-7x (includes flagged timings" in text
    fig = next(iter(figs.values()))
    assert fig["rings"] == 2 and any(t.startswith("red ring") for t in fig["legend"])
