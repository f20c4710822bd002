"""The README's attention table, generated from the registry.

``python -m suite.docs`` prints it; ``python -m suite.docs --write`` replaces
the table between the markers in README.md. A test fails when they differ.
"""
from __future__ import annotations

import sys
from pathlib import Path

import attentions

BEGIN, END = "<!-- attention-table:begin -->", "<!-- attention-table:end -->"
README = Path(__file__).resolve().parents[1] / "README.md"


def attention_table() -> str:
    rows = ["| name | family | complexity | needs | source |", "|---|---|---|---|---|"]
    for name in attentions.list_attentions():
        i = attentions.attention_info(name)
        rows.append(f"| `{name}` | {i.family} | {i.complexity} | {i.needs} | {i.source} |")
    return "\n".join(rows)


def readme_table(text: str) -> str:
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[start:end].strip()


def write_readme(path: Path = README) -> None:
    text = path.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    path.write_text(text[:start] + "\n" + attention_table() + "\n" + text[end:])


if __name__ == "__main__":
    if "--write" in sys.argv:
        write_readme()
    else:
        print(attention_table())
