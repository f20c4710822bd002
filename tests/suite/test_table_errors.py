"""suite.report and suite.compare answer every bad table or argument with one line
``error: ...`` naming the file or column and what is valid, exit code 2, no traceback;
a FIFO or a device given as a table is never opened."""
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from suite import compare as CMP
from suite import report as R
from suite.records import write_records
from test_report import row  # noqa: E402  (tests/suite is on sys.path under pytest)

ROOT = Path(__file__).resolve().parents[2]


def good(tmp_path, name="good") -> Path:
    folder = tmp_path / name
    write_records([row(latency=10.0), row("elfatt", latency=2.0)], folder)
    return folder / "records.parquet"


def frame(tmp_path) -> pd.DataFrame:
    return pd.read_parquet(good(tmp_path, "frame"))


def run(tool: str, args: list[str], capsys) -> tuple[int, str]:
    """(exit code, stderr) of the tool's main, in this process."""
    try:
        code = R.main(args) if tool == "report" else CMP.main(args)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def argv(tool: str, table: Path, tmp_path, extra=()) -> list[str]:
    if tool == "report":
        return [str(table), "--out", str(tmp_path / "rep"), *extra]
    return [str(good(tmp_path, "base")), str(table), "--out", str(tmp_path / "cmp"), *extra]


def write(tmp_path, df: pd.DataFrame, name="bad.parquet") -> Path:
    path = tmp_path / name
    df.to_parquet(path) if name.endswith(".parquet") else df.to_csv(path, index=False)
    return path


BAD_TABLES = {
    "missing columns": (lambda t: frame(t).drop(columns=["status", "latency_ms_p50"]), "no column status"),
    "not a results table": (lambda t: pd.DataFrame({"a": [1], "b": [2]}), "no column"),
    "no rows": (lambda t: frame(t).iloc[:0], "no rows"),
    "zero latency": (lambda t: frame(t).assign(latency_ms_p10=0.0, latency_ms_p50=0.0, latency_ms_p90=0.0),
                     "column latency_ms_p10 is 0.0"),
    "negative latency": (lambda t: frame(t).assign(latency_ms_p50=-5.0), "column latency_ms_p50 is -5.0"),
    "text for a number": (lambda t: frame(t).assign(resolution="big"), "column resolution holds 'big'"),
    "unknown status": (lambda t: frame(t).assign(status="fine"), "column status holds 'fine'; valid: ok"),
}


@pytest.mark.parametrize("tool", ["report", "compare"])
@pytest.mark.parametrize("case", sorted(BAD_TABLES))
def test_a_bad_table_is_one_line(tool, case, tmp_path, capsys):
    make, said = BAD_TABLES[case]
    bad = write(tmp_path, make(tmp_path), "bad.csv" if case == "text for a number" else "bad.parquet")
    code, err = run(tool, argv(tool, bad, tmp_path), capsys)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert said in err and str(bad) in err, err


@pytest.mark.parametrize("tool", ["report", "compare"])
def test_an_out_that_is_a_file_or_cannot_be_made_is_one_line(tool, tmp_path, capsys):
    (tmp_path / "file").write_text("a file")
    for out, said in ((tmp_path / "file", "is a file"), (tmp_path / "file" / "sub", "cannot create")):
        code, err = run(tool, argv(tool, good(tmp_path), tmp_path)[:-1] + [str(out)], capsys)
        assert code == 2 and err.startswith("error: --out") and said in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("tool", ["report", "compare"])
def test_a_folder_that_cannot_take_the_files_is_one_line(tool, tmp_path, capsys, monkeypatch):
    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied", str(tmp_path / "out"))

    monkeypatch.setattr(Path, "write_text", refuse)  # root writes anywhere: refuse the write itself
    code, err = run(tool, argv(tool, good(tmp_path), tmp_path), capsys)
    assert code == 2 and err.startswith("error: could not write") and "Permission denied" in err, err


@pytest.mark.parametrize("tool", ["report", "compare"])
def test_unreadable_files_are_named_when_nothing_readable_remains(tool, tmp_path, capsys):
    folder = tmp_path / "sweep"
    (folder / "0_job").mkdir(parents=True)
    (folder / "0_job" / "records.parquet").write_bytes(b"truncated")
    code, err = run(tool, argv(tool, folder, tmp_path), capsys)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert str(folder / "0_job" / "records.parquet") in err, err


@pytest.mark.timeout(60)
@pytest.mark.parametrize("tool", ["report", "compare"])
def test_a_fifo_or_a_device_is_refused_not_read(tool, tmp_path, capsys):
    fifo = tmp_path / "results.parquet"
    os.mkfifo(fifo)
    for table, kind in ((fifo, "FIFO"), (Path("/dev/zero"), "character device"), (tmp_path, "FIFO")):
        code, err = run(tool, argv(tool, table, tmp_path), capsys)
        assert code == 2 and err.startswith("error: ") and kind in err and len(err.splitlines()) == 1, err


def test_no_traceback_from_the_command_line(tmp_path):
    """The same through ``python -m``: a FIFO table (must not hang) and a zero latency."""
    os.mkfifo(tmp_path / "pipe.parquet")
    zero = write(tmp_path, frame(tmp_path).assign(latency_ms_p10=0.0, latency_ms_p50=0.0, latency_ms_p90=0.0))
    for cmd in (["suite.report", str(tmp_path / "pipe.parquet")], ["suite.compare", str(zero), str(zero)]):
        p = subprocess.run([sys.executable, "-m", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and p.stderr.startswith("error:") and "Traceback" not in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr


@pytest.mark.parametrize("tool,args,says", [
    ("collect", [], "the following arguments are required: paths"),
    ("compare", ["only-one"], "the following arguments are required: new"),
    ("report", ["--bogus", "t.parquet"], "unrecognized arguments: --bogus"),
    ("targets", ["a", "b"], "unrecognized arguments: b"),
    ("gpu_check", ["--minutes", "abc"], "argument --minutes: invalid float value: 'abc'"),
])
def test_a_wrong_argument_to_any_tool_is_one_line(tool, args, says, capsys):
    import importlib

    main = importlib.import_module(f"suite.{tool}").main
    with pytest.raises(SystemExit) as stop:
        main(args)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err == f"error: {says}; python -m suite.{tool} --help shows the usage\n"
