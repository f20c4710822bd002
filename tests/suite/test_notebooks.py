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
