"""The benchmark results are JSON: the scripts write OUT.json and render OUT.md from it, every stored result loads and
renders back to its .md, and the docs build their performance pages (tables and ratio plots) from it."""
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
RESULTS = BENCH / "results"
# every benchmark script with an --out option (its own, or the shared parser's)
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if not p.name.startswith("_") and
                 any(s in p.read_text(encoding="utf-8") for s in ('"--out"', "side_by_side_parser(")))
# the sdist ships tests and benchmarks but neither the stored results nor docs/
needs_results = pytest.mark.skipif(not RESULTS.is_dir(), reason="no benchmarks/results in this tree")
needs_docs = pytest.mark.skipif(not (ROOT / "docs" / "_perfpages.py").exists(), reason="no docs/ in this tree")


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if not (BENCH / "_report.py").exists():  # the wheel's tests run from a copy of tests/ alone
    pytest.skip("no benchmarks/ beside tests/", allow_module_level=True)
report = _load("_bench_report", BENCH / "_report.py")


def _sample():
    result = report.new_result("Sample benchmark", command="python benchmarks/bench_x.py --out x.md",
                               machine=["- date: 2026-12-05 12:00 UTC", "- CPU: test"], intro="Sample intro.")
    report.add_table(result, "Timings", ["shape", "op", "cnn_ext", "torch", "torch/cnn_ext"],
                     [["(1, 2)", "forward", "1.00 ms", "2.00 ms", "2.00×"],
                      ["(3, 4)", "backward", "2.00 ms", "1.00 ms", "0.50×"],
                      ["(5, 6)", "fwd+bwd", "3.00 ms", None, None]],
                     notes="Sample notes.")
    report.add_text(result, "Targets", "- all met")
    return result


def test_write_results_writes_json_and_the_markdown_rendered_from_it(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCH))
    common = _load("_bench_common", BENCH / "_common.py")
    result = _sample()
    printed = common.write_results(result, str(tmp_path / "x.md"))
    assert capsys.readouterr().out == printed
    data = json.loads((tmp_path / "x.json").read_text(encoding="utf-8"))
    assert data == result
    assert data["command"] == "python benchmarks/bench_x.py --out x.md"
    assert data["machine"] == ["date: 2026-12-05 12:00 UTC", "CPU: test"]
    assert data["tables"][0]["columns"][-1] == "torch/cnn_ext"
    assert data["tables"][0]["rows"][0] == ["(1, 2)", "forward", "1.00 ms", "2.00 ms", "2.00×"]
    md = (tmp_path / "x.md").read_text(encoding="utf-8")
    assert md == printed == report.render_markdown(data)
    for line in ["## Sample benchmark", "Command: `python benchmarks/bench_x.py --out x.md`", "- CPU: test",
                 "### Timings", "| shape | op | cnn_ext | torch | torch/cnn_ext |", "| --- | --- | --- | --- | --- |",
                 "| (1, 2) | forward | 1.00 ms | 2.00 ms | 2.00× |", "| (5, 6) | fwd+bwd | 3.00 ms | — | — |",
                 "Sample notes.", "### Targets", "- all met"]:
        assert line in md.splitlines()


def test_write_results_records_the_command_line_when_none_is_given(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    common = _load("_bench_common", BENCH / "_common.py")
    monkeypatch.setattr(sys, "argv", [str(BENCH / "bench_x.py"), "--quick", "--shapes", "1,2;3,4"])
    result = _sample()
    result["command"] = None
    common.write_results(result, str(tmp_path / "y"))
    data = json.loads((tmp_path / "y.json").read_text(encoding="utf-8"))
    assert data["command"] == "python benchmarks/bench_x.py --quick --shapes '1,2;3,4'"
    assert (tmp_path / "y.md").exists()


@pytest.mark.parametrize("break_it, match", [
    (lambda r: r["tables"][0]["rows"][1].pop(), r"table 0 \('Timings'\), row 1: 4 cells for 5 columns"),
    (lambda r: r["tables"][0]["rows"].append(["a"] * 6), r"table 0 \('Timings'\), row 3: 6 cells for 5 columns"),
    (lambda r: r["tables"][0]["rows"][0].__setitem__(2, [1.0]), r"table 0 \('Timings'\), row 0: cell \[1.0\]"),
    (lambda r: r["tables"][1].pop("rows"), r"table 1 \('Targets'\) has no rows"),
    (lambda r: r.pop("format"), "not a benchmark result"),
], ids=["short_row", "long_row", "bad_cell", "no_rows", "no_format"])
def test_a_bad_table_raises_value_error_naming_it_and_writes_nothing(tmp_path, break_it, match):
    result = _sample()
    break_it(result)
    with pytest.raises(ValueError, match=match):
        report.save(result, str(tmp_path / "bad.md"))
    with pytest.raises(ValueError, match=match):
        report.render_markdown(result)
    assert list(tmp_path.iterdir()) == []


def test_json_round_trips_and_keeps_one_row_per_line(tmp_path):
    result = _sample()
    report.save(result, str(tmp_path / "z.json"))
    text = (tmp_path / "z.json").read_text(encoding="utf-8")
    assert report.load(tmp_path / "z.json") == result
    lines = [line.strip() for line in text.splitlines()]
    assert '["(1, 2)", "forward", "1.00 ms", "2.00 ms", "2.00×"],' in lines
    assert '"columns": ["shape", "op", "cnn_ext", "torch", "torch/cnn_ext"],' in lines


def test_every_benchmark_script_writes_through_write_results():
    for name in SCRIPTS:
        source = (BENCH / name).read_text(encoding="utf-8")
        assert "C.write_results(" in source or "_report.save(" in source, name
        assert not re.search(r"open\((args\.out|[^)]*\.md)", source), f"{name} writes its report itself"
        assert "emit(" not in source and "markdown_table(header" not in source, name


RESULT_FILES = sorted(RESULTS.glob("*.json"))


@needs_results
def test_every_markdown_result_has_its_json():
    assert RESULT_FILES
    assert {p.stem for p in RESULTS.glob("*.md")} == {p.stem for p in RESULT_FILES}


@pytest.mark.parametrize("path", RESULT_FILES, ids=[p.stem for p in RESULT_FILES])
def test_every_stored_result_loads_and_renders_to_its_markdown(path):
    result = report.load(path)
    assert report.render_markdown(result) == path.with_suffix(".md").read_text(encoding="utf-8")


def test_ratio_columns_and_cells():
    assert report.torch_ratio_column(["shape", "torch", "torch/cnn_ext", "im2col/cnn_ext"]) == 2
    assert report.torch_ratio_column(["threads", "cnn_ext step", "torch step", "ratio"]) == 3
    assert report.torch_ratio_column(["row", "avx2", "avx512", "avx2 / avx512"]) is None
    assert report.torch_ratio_column(["workload", "ratio"]) is None  # no PyTorch in the table
    assert [report.cell_number(c) for c in ["1.52×", "104×", "0.98", 2, "—", None, "~ (n=1 of 16, ×16)"]] == \
        [1.52, 104.0, 0.98, 2.0, None, None, None]


@needs_docs
def test_the_docs_write_a_page_with_the_table_and_a_ratio_plot(tmp_path):
    pytest.importorskip("matplotlib")
    perfpages = _load("_perfpages", ROOT / "docs" / "_perfpages.py")
    results = tmp_path / "results"
    results.mkdir()
    report.save(_sample(), str(results / "sample.md"))
    (results / "sample.md").unlink()  # the pages come from the JSON alone
    out = tmp_path / "performance"
    perfpages.write_pages(results, out)
    page = (out / "sample.md").read_text(encoding="utf-8").splitlines()
    assert page[0] == "# Sample benchmark"
    assert "Command: `python benchmarks/bench_x.py --out x.md`" in page
    assert "## Timings" in page and "## Targets" in page
    for line in ["| shape | op | cnn_ext | torch | torch/cnn_ext |", "| (3, 4) | backward | 2.00 ms | 1.00 ms | 0.50× |",
                 "Sample intro.", "Sample notes.", "- CPU: test", "```{image} _plots/sample-0.png"]:
        assert line in page
    png = (out / "_plots" / "sample-0.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert not (out / "_plots" / "sample-1.png").exists()  # the text section has no ratios to plot
    overview = (out / "_overview.md").read_text(encoding="utf-8")
    assert "{doc}`performance/sample`" in overview


@needs_docs
def test_the_docs_configuration_builds_the_pages_from_the_json():
    conf = (ROOT / "docs" / "conf.py").read_text(encoding="utf-8")
    assert "_perfpages.write_pages(ROOT / \"benchmarks\" / \"results\", DOCS / \"performance\")" in conf
    assert "{include} performance/_overview.md" in (ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
