"""The README's generated tables: attentions (from the registry) and settings
(from the typed config). A test fails when the README is stale.

``python -m suite.docs`` prints both; ``python -m suite.docs --write``
replaces them between their markers in README.md.
"""
from __future__ import annotations

import inspect
import sys
from pathlib import Path

import attentions

from .config import settings_help
from .sweep.callbacks import KNOBS, SweepCallback
from .workloads import get_workload, list_workloads

README = Path(__file__).resolve().parents[1] / "README.md"


def attention_table() -> str:
    rows = ["| name | family | complexity | needs | source |", "|---|---|---|---|---|"]
    for name in attentions.list_attentions():
        i = attentions.attention_info(name)
        rows.append(f"| `{name}` | {i.family} | {i.complexity} | {i.needs} | {i.source} |")
    return "\n".join(rows)


def all_settings() -> list[tuple[str, str, str]]:
    """(key, default, help) of every setting: the top-level ones, then each workload's
    own (``workload.*``) and the groups it reads (``model.*``, ``proxy.*``), once each."""
    rows = [r for r in settings_help() if r[0] not in ("attention", "workload", "model", "proxy")]
    seen = {r[0] for r in rows}
    for name in list_workloads():
        wl = get_workload(name)
        own = [r for r in settings_help(wl.Settings, "workload.") if r[0] != "workload.name"]
        for key, default, text in own:
            if key not in seen:
                seen.add(key)
                rows.append((key, default, f"{text} ({name})"))
        for group, schema in wl.groups.items():
            for row in settings_help(schema, f"{group}."):
                if row[0] not in seen:
                    seen.add(row[0])
                    rows.append(row)
    return rows


def settings_table() -> str:
    rows = ["| setting | default | meaning |", "|---|---|---|"]
    rows.append(f"| `workload` | `layer` | {', '.join(f'`{w}`' for w in list_workloads())} "
                f"(conf/workload/; each one module in suite/workloads/) |")
    for key, default, text in all_settings():
        rows.append(f"| `{key}` | `{default}` | {text} |")
    params = inspect.signature(SweepCallback.__init__).parameters
    for name, text in KNOBS.items():
        default = str(params[name].default).lower() if isinstance(params[name].default, bool) else params[name].default
        rows.append(f"| `hydra.callbacks.sweep.{name}` | `{default}` | {text} |")
    return "\n".join(rows)


def _bounds(text: str, marker: str) -> tuple[int, int]:
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    return text.index(begin) + len(begin), text.index(end)


def readme_table(text: str, marker: str = "attention-table") -> str:
    start, end = _bounds(text, marker)
    return text[start:end].strip()


def write_readme(path: Path = README) -> None:
    text = path.read_text()
    for marker, table in (("attention-table", attention_table), ("settings-table", settings_table)):
        start, end = _bounds(text, marker)
        text = text[:start] + "\n" + table() + "\n" + text[end:]
    path.write_text(text)


if __name__ == "__main__":
    if "--write" in sys.argv:
        write_readme()
    else:
        print(attention_table(), settings_table(), sep="\n\n")
