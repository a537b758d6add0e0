"""Convert a markdown benchmark report (benchmarks/results/*.md) into the JSON result format of benchmarks/_report.py.

For reports written by hand or before the scripts wrote JSON. The cells stay the strings the report shows, so the
JSON holds exactly the report's measurements; it refuses a report whose re-rendering would change a table.

    python tools/results_md_to_json.py benchmarks/results/NAME.md [...]   # writes NAME.json next to each
"""
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import _report  # noqa: E402  (the benchmarks directory is not a package)

_HEADING = re.compile(r"^(#{1,6}) (.*)$")
_SEPARATOR = re.compile(r"^\|( *:?-{3,}:? *\|)+\s*$")


def _cells(line):
    return [c.strip() for c in line.strip()[1:-1].split("|")]


def _text(buf):
    while buf and not buf[0].strip():
        buf.pop(0)
    while buf and not buf[-1].strip():
        buf.pop()
    return "\n".join(buf)


def parse(text):
    """The result a markdown report describes: its heading, command, machine facts, tables and text between."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if _HEADING.match(ln))
    m = _HEADING.match(lines[start])
    result = _report.new_result(m.group(2).strip(), level=len(m.group(1)))
    i = start + 1
    while i < len(lines) and not lines[i].strip():
        i += 1
    cmd = re.fullmatch(r"Command: `(.*)`", lines[i]) if i < len(lines) else None
    if cmd:
        result["command"] = cmd.group(1)
        i += 1
        while i < len(lines) and not lines[i].strip():
            i += 1
    if i < len(lines) and lines[i].startswith("- date:"):
        while i < len(lines) and lines[i].startswith("- "):
            result["machine"].append(lines[i][2:])
            i += 1
    current, buf, fence = None, [], False

    def flush(into_intro):
        text_ = _text(buf)
        buf.clear()
        if current is None:
            result["intro"] = text_
        else:
            current["intro" if into_intro else "notes"] = text_

    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            fence = not fence
        heading = None if fence else _HEADING.match(line)
        if heading:
            flush(current is not None and not current["columns"] and not current["intro"])
            current = _report.add_table(result, heading.group(2).strip(), [], [], level=len(heading.group(1)))
            i += 1
            continue
        if not fence and line.startswith("|") and i + 1 < len(lines) and _SEPARATOR.match(lines[i + 1]):
            if current is None or current["columns"]:
                flush(False)
                current = _report.add_table(result, None, [], [])
            else:
                flush(True)
            current["columns"] = _cells(line)
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                current["rows"].append(_cells(lines[i]))
                i += 1
            continue
        buf.append(line)
        i += 1
    flush(current is not None and not current["columns"] and not current["intro"])
    return _report.validate(result)


def _table_lines(text):
    return [ln.rstrip() for ln in text.splitlines() if ln.startswith("|")]


def convert(md_path):
    """Write the JSON next to md_path; fail when rendering it would not give back the report's tables."""
    with open(md_path, encoding="utf-8") as fh:
        text = fh.read()
    result = parse(text)
    if _table_lines(_report.render_markdown(result)) != _table_lines(text):
        raise ValueError(f"{md_path}: re-rendering changes a table")
    json_path = md_path[:-3] + ".json"
    with open(json_path, "w", encoding="utf-8") as fh:
        fh.write(_report.dumps(result))
    return json_path


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(convert(path))
