"""The benchmark result format: one JSON document per result, and the markdown rendered from it.

Light on purpose (standard library only): docs/conf.py and the tests import it without cnn_ext's kernels or PyTorch.

A result is a dict::

    {"format": 1,
     "title": "...", "level": 2,              # the markdown heading of the report
     "command": "python benchmarks/...",      # the command line that made it, or None
     "machine": ["date: ...", "CPU: ..."],     # machine facts, one per line
     "intro": "...",                          # markdown text before the first table
     "tables": [{"title": "..." or None, "level": 3, "intro": "...",
                 "columns": ["...", ...], "rows": [[cell, ...], ...], "notes": "..."}],
     "notes": "..."}                          # markdown text after the last table

A cell is a string (as printed), a number or None (printed as "—"). A table without columns is a section of text.
"""
import json
import os
import re

FORMAT = 1
_TABLE_KEYS = ("title", "level", "intro", "columns", "rows", "notes")


def new_result(title, *, level=2, command=None, machine=(), intro=""):
    """An empty result with its heading, command line, machine facts and opening text."""
    return {"format": FORMAT, "title": title, "level": level, "command": command,
            "machine": [m[2:] if m.startswith("- ") else m for m in machine], "intro": intro, "tables": [],
            "notes": ""}


def add_table(result, title, columns, rows, *, level=3, intro="", notes=""):
    """Append a table (title None: no heading of its own) and return it; its rows are checked when written."""
    table = {"title": title, "level": level, "intro": intro, "columns": list(columns),
             "rows": [list(r) for r in rows], "notes": notes}
    result["tables"].append(table)
    return table


def add_text(result, title, text, *, level=3):
    """Append a section of text only (a table without columns)."""
    return add_table(result, title, [], [], level=level, intro=text)


def _name(table, i):
    return f"table {i} ({table.get('title')!r})" if table.get("title") else f"table {i}"


def validate(result):
    """Raise ValueError naming the first thing wrong: a missing key, a row of the wrong length, a bad cell."""
    if not isinstance(result, dict) or result.get("format") != FORMAT:
        raise ValueError(f"not a benchmark result of format {FORMAT}")
    if not isinstance(result.get("title"), str) or not isinstance(result.get("tables"), list):
        raise ValueError("a result needs a title (str) and a list of tables")
    for i, table in enumerate(result["tables"]):
        missing = [k for k in ("columns", "rows") if k not in table]
        if missing:
            raise ValueError(f"{_name(table, i)} has no {' and no '.join(missing)}")
        cols = table["columns"]
        if not all(isinstance(c, str) for c in cols):
            raise ValueError(f"{_name(table, i)}: every column name must be a string")
        for j, row in enumerate(table["rows"]):
            if len(row) != len(cols):
                raise ValueError(f"{_name(table, i)}, row {j}: {len(row)} cells for {len(cols)} columns")
            bad = [c for c in row if c is not None and not isinstance(c, (str, int, float))]
            if bad:
                raise ValueError(f"{_name(table, i)}, row {j}: cell {bad[0]!r} is not a string, number or None")
    return result


def _cell(c):
    return "—" if c is None else str(c)


def markdown_table(columns, rows):
    """Markdown lines of one table."""
    out = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    return out + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]


def _block(text):
    return [text, ""] if text else []


def render_markdown(result, *, level=None, preface=(), before_table=None):
    """The markdown report of a result (validated first).

    ``level``: the title's heading level (default the result's own), the tables' headings moved with it and kept
    below it; ``preface``: lines after the command line; ``before_table``: {table index: lines} put just before
    that table (the docs' plots).
    """
    validate(result)
    base = result.get("level", 2)
    level = base if level is None else level
    lines = ["#" * level + " " + result["title"], ""]
    if result.get("command"):
        lines += [f"Command: `{result['command']}`", ""]
    lines += list(preface)
    if result.get("machine"):
        lines += [f"- {m}" for m in result["machine"]] + [""]
    lines += _block(result.get("intro"))
    for i, table in enumerate(result["tables"]):
        if table.get("title"):
            lines += ["#" * max(level + 1, table.get("level", 3) + level - base) + " " + table["title"], ""]
        lines += _block(table.get("intro"))
        lines += list((before_table or {}).get(i, ()))
        if table["columns"]:
            lines += markdown_table(table["columns"], table["rows"]) + [""]
        lines += _block(table.get("notes"))
    lines += _block(result.get("notes"))
    return "\n".join(lines).rstrip("\n") + "\n"


def out_paths(out):
    """OUT.json and OUT.md from --out (given with or without .md / .json)."""
    base = out[:-3] if out.endswith(".md") else out[:-5] if out.endswith(".json") else out
    return base + ".json", base + ".md"


def _dumps(value, indent, inline):
    if inline or not isinstance(value, (dict, list)) or not value:
        return json.dumps(value, ensure_ascii=False)
    pad = " " * (indent + 1)
    if isinstance(value, list):
        # a row (a list of cells inside the list of rows) stays on one line, so the JSON diffs like the table
        items = [_dumps(v, indent + 1, isinstance(v, list)) for v in value]
        return "[\n" + ",\n".join(pad + i for i in items) + "\n" + " " * indent + "]"
    items = [f"{json.dumps(k)}: {_dumps(v, indent + 1, k == 'columns')}" for k, v in value.items()]
    return "{\n" + ",\n".join(pad + i for i in items) + "\n" + " " * indent + "}"


def dumps(result):
    """The JSON text of a result (validated first): one line per row and per list of columns."""
    return _dumps(validate(result), 0, False) + "\n"


def save(result, out):
    """Write OUT.json (the data) and OUT.md (rendered from it); returns the markdown."""
    text = render_markdown(result)
    json_path, md_path = out_paths(out)
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, "w", encoding="utf-8") as fh:
        fh.write(dumps(result))
    with open(md_path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return text


def load(path):
    """A result read from its JSON file, validated."""
    with open(path, encoding="utf-8") as fh:
        return validate(json.load(fh))


# ---- ratios against PyTorch (for plots) -------------------------------------------------------------

_RATIO = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?(?:e[-+]?[0-9]+)?)\s*[×x]?\s*(\(.*\))?\s*$")


def torch_ratio_column(columns):
    """Index of the column holding PyTorch time / cnn_ext time, or None.

    "torch/cnn_ext" by name; a bare "ratio" column when the table times torch (the MNIST CNN's tables).
    """
    for i, c in enumerate(columns):
        if re.fullmatch(r"\s*torch\s*/\s*cnn_ext\s*", c):
            return i
    if any(c.startswith("torch") for c in columns):
        for i, c in enumerate(columns):
            if c.strip() == "ratio":
                return i
    return None


def cell_number(cell):
    """A cell's number ("1.52×" -> 1.52), or None when it holds none (a dash, a note)."""
    if isinstance(cell, (int, float)) and not isinstance(cell, bool):
        return float(cell)
    m = _RATIO.match(cell) if isinstance(cell, str) else None
    return float(m.group(1)) if m else None
