"""The performance pages of the documentation, written from the benchmarks' JSON results (benchmarks/results/*.json).

Each result becomes a page: its title, command, machine facts and text, every table, the result's PNG if there is
one, and for each table with a ratio-against-PyTorch column a plot of those ratios (matplotlib, Agg). An overview
(``_overview.md``, included by docs/performance.md) lists the pages. docs/conf.py calls :func:`write_pages`.
"""
import importlib.util
import io
import os
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _load_report():
    # benchmarks/ is not a package: load its format module from its path
    spec = importlib.util.spec_from_file_location("_bench_report", ROOT / "benchmarks" / "_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report = _load_report()


def write_if_changed(path, data):
    """Write text or bytes only when they differ, so Sphinx does not rebuild unchanged pages."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "b" if isinstance(data, bytes) else ""
    if path.exists() and (path.read_bytes() if mode else path.read_text(encoding="utf-8")) == data:
        return
    if mode:
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8")


def _row_label(columns, row):
    """The cells that name a row: those before the first cnn_ext timing column (at most four)."""
    end = next((i for i, c in enumerate(columns) if c.startswith("cnn_ext")), 1)
    return " ".join(str(c) for c in row[:max(1, min(end, 4))])


def ratio_plot(table, title):
    """PNG bytes of the table's PyTorch-time / cnn_ext-time ratios (a line at 1.0), or None without any."""
    col = report.torch_ratio_column(table["columns"])
    if col is None:
        return None
    points = [(_row_label(table["columns"], row), report.cell_number(row[col])) for row in table["rows"]]
    points = [(label, r) for label, r in points if r is not None and r > 0]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, ratios = zip(*points)
    fig, ax = plt.subplots(figsize=(9, 1.0 + 0.2 * len(points)))
    y = range(len(points))
    # bars start at 1.0, so faster rows point right and slower ones left, on a linear or a log axis alike
    ax.barh(y, [r - 1.0 for r in ratios], left=1.0, color=["tab:green" if r >= 1 else "tab:red" for r in ratios])
    ax.axvline(1.0, color="black", linewidth=1)
    if max(ratios) / min(ratios) > 20:  # ratios from 0.5x to 50x: equal steps per factor keep both readable
        ax.set_xscale("log")
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.set_ylim(len(points) - 0.5, -0.5)  # first row on top, no margin rows
    ax.set_xlabel(f"{table['columns'][col]} = PyTorch time / cnn_ext time (> 1: cnn_ext faster)", fontsize=8)
    ax.set_title(textwrap.shorten(title, 110, placeholder=" …"), fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def page(result, stem, png=None, plots=()):
    """The markdown page of one result; ``plots`` maps a table's index to its plot's path from the page."""
    preface = [f"From `benchmarks/results/{stem}.json` (rendered as `{stem}.md` there).", ""]
    if png:
        preface += [f"```{{image}} {png}", f":alt: {result['title']}", "```", ""]
    images = {i: [f"```{{image}} {path}", f":alt: ratios against PyTorch of table {i + 1}", "```", ""]
              for i, path in dict(plots).items()}
    return report.render_markdown(result, level=1, preface=preface, before_table=images)


def write_pages(results_dir, out_dir):
    """One page per results_dir/*.json in out_dir, their plots in out_dir/_plots, the list in out_dir/_overview.md."""
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    overview = ["| page | tables | plots of ratios against PyTorch | command |", "| --- | --- | --- | --- |"]
    for path in sorted(results_dir.glob("*.json")):
        stem = path.stem
        result = report.load(path)
        plots = {}
        for i, table in enumerate(result["tables"]):
            png = ratio_plot(table, table.get("title") or result["title"])
            if png is not None:
                write_if_changed(out_dir / "_plots" / f"{stem}-{i}.png", png)
                plots[i] = f"_plots/{stem}-{i}.png"
        own_png = path.with_suffix(".png")
        png_rel = os.path.relpath(own_png, out_dir) if own_png.exists() else None
        write_if_changed(out_dir / f"{stem}.md", page(result, stem, png_rel, plots))
        n_tables = sum(1 for t in result["tables"] if t["columns"])
        command = f"`{result['command']}`" if result.get("command") else "—"
        overview.append(f"| {{doc}}`{out_dir.name}/{stem}` | {n_tables} | {len(plots)} | {command} |")
    write_if_changed(out_dir / "_overview.md", "\n".join(overview) + "\n")
