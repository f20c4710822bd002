"""The shape of the project: no import cycles, attentions/ never imports suite/,
files and functions small enough to read, nothing points outside the
repository and every file it names exists, the README's generated tables are
current."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("attentions", "suite", "benchmarks")


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = p
    out["run"] = ROOT / "run.py"
    return out


def imports(name: str, path: Path, known: dict) -> set[str]:
    """Project modules ``name`` imports (anywhere in the file, lazy imports too)."""
    found = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            parts = name.split(".")
            base = parts[: len(parts) - node.level + (1 if is_pkg else 0)] if node.level else []
            stem = ".".join(base + ([node.module] if node.module else []))
            subs = {f"{stem}.{a.name}" for a in node.names if f"{stem}.{a.name}" in known}
            found |= subs | ({stem} if len(subs) < len(node.names) else set())
    return {m for m in found if m in known and m != name}


def test_no_import_cycles():
    known = modules()
    graph = {m: imports(m, p, known) for m, p in known.items()}
    seen, stack, on, cycles = {}, [], set(), []

    def visit(v, low):
        seen[v] = low[v] = len(seen)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in seen:
                visit(w, low)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], seen[w])
        if low[v] == seen[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    low = {}
    for v in graph:
        if v not in seen:
            visit(v, low)
    assert cycles == []


def test_attentions_never_import_suite():
    known = modules()
    for name, path in known.items():
        if name.startswith("attentions"):
            bad = [m for m in imports(name, path, known) if m.startswith("suite")]
            assert not bad, (name, bad)


@pytest.mark.parametrize("name", sorted(modules()))
def test_files_and_functions_stay_readable(name):
    path = modules()[name]
    text = path.read_text()
    if "triton" not in path.name:  # the Triton kernel files are allowed to be long
        assert len(text.splitlines()) <= 400, f"{path} has {len(text.splitlines())} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            jit = any("jit" in ast.unparse(d) for d in node.decorator_list)
            assert jit or node.end_lineno - node.lineno + 1 <= 60, f"{path}:{node.lineno} {node.name} is long"


def text_files() -> list[Path]:
    """The project's own text: code, configs, docs, notebooks, CI scripts; not results/, caches,
    hidden folders or a virtual environment kept inside the checkout."""
    def ours(p: Path) -> bool:
        parts = p.relative_to(ROOT).parts
        hidden = any(q.startswith(".") and q != ".ci" for q in parts)
        return not hidden and not {"__pycache__", "results", "site-packages"} & set(parts) \
            and not any(q.endswith(".egg-info") for q in parts)
    return [p for p in ROOT.rglob("*") if p.is_file() and ours(p)
            and (p.suffix in (".py", ".md", ".yaml", ".ipynb", ".toml", ".sh") or p.parent.name == ".ci")]


def test_nothing_points_outside_the_repository():
    pattern = re.compile(r"\.\./shared\b|\b(ELFATT|GPU|STYLE|METHOD)\.md\b|\bissue [0-9]+\b")
    bad = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in text_files() for m in [pattern.search(p.read_text())] if m]
    assert bad == []


def test_every_file_the_project_names_exists():
    """A path under one of the project's folders, named in a docstring, a
    comment, a config or the README, exists (a moved module leaves none
    behind). Paths under results/ are outputs, and the README's extending
    example names files a reader would create."""
    pattern = re.compile(r"\b((?:suite|attentions|conf|tests|benchmarks|hydra_plugins|notebooks|\.ci)/"
                         r"[A-Za-z0-9_./-]*[A-Za-z0-9_])")
    examples = {"attentions/my_attention.py", "conf/attention/my_attention.yaml"}
    files = [p for p in text_files() if p.name != "NOTES.md"]  # the notes keep the history
    bad = sorted({f"{p.relative_to(ROOT)}: {m}" for p in files for m in pattern.findall(p.read_text(errors="ignore"))
                  if m not in examples and not (ROOT / m).exists()})
    assert bad == []


def test_readme_settings_table_matches_the_config():
    from suite.docs import README, readme_table, settings_table

    assert readme_table(README.read_text(), "settings-table") == settings_table(), "run: python -m suite.docs --write"


def test_ci_runs_the_readmes_commands_verbatim():
    """CI does what a newcomer does: the README's quickstart lines, the console script ``pytest`` included."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quickstart.*?```bash\n(.*?)```", readme, re.S).group(1).strip().splitlines()
    ci = (ROOT / ".ci" / "run").read_text()
    said = dict(re.findall(r"^readme_(install|test)='(.*)'$", ci, re.M))
    assert [said["install"], said["test"]] == block
    assert "-m pytest" not in ci
