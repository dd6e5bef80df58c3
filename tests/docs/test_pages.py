"""README.md fits in a few screens and names nothing that goes stale; its figures table and
docs/benchmarks.md are what benchmarks/report.py makes of the committed records; the records
follow one schema; the README's links lead somewhere."""

from __future__ import annotations

import importlib.util
import json
import re
import unicodedata
from pathlib import Path

import pytest

from .blocks import ROOT

README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results"
COMMIT = re.compile(r"(?<![\w-])(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}(?![\w-])")
FIGURE_KEYS = {"min", "median", "max", "value", "unit"}


def report():
    spec = importlib.util.spec_from_file_location("report", ROOT / "benchmarks" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_is_at_most_250_lines():
    assert len(README.read_text().splitlines()) <= 250


def test_the_readme_names_no_commit_test_results_section_or_time_of_day():
    text = README.read_text()
    assert not COMMIT.findall(text), "commit hashes belong to the records, not the README"
    assert not re.findall(r"\btest_\w+", text), "test names belong to the tests"
    assert "RESULTS.md" not in text
    assert not re.findall(r"\b\d{1,2}:\d{2}\b|\bUTC\b", text), "times belong to the records"


def test_the_figures_are_what_report_py_makes_of_the_committed_records():
    r = report()
    records = r.load(RESULTS)
    readme = README.read_text()
    assert r.START in readme and r.END in readme
    assert r.with_table(readme, r.table(records)) == readme, "run python benchmarks/report.py"
    assert (ROOT / "docs" / "benchmarks.md").read_text() == r.page(records), "run python benchmarks/report.py"
    paper = r.PAPER.read_text()
    assert r.with_table(paper, r.on_paper(records), r.PAPER_START, r.PAPER_END) == paper, \
        "run python benchmarks/report.py"


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.jsonl")), ids=lambda p: p.name)
def test_records_follow_the_schema(path):
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    assert lines, f"{path.name} is empty"
    for line in lines:
        record = json.loads(line)
        assert {"benchmark", "title", "command", "commit", "date", "machine", "figures", "notes",
                "hand_run"} <= set(record)
        assert f"{record['benchmark']}.jsonl" == path.name
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\dZ", record["date"]), record["date"]
        machine = record["machine"]
        assert {"cpu", "kind", "cores", "gpu", "torch"} <= set(machine)
        assert machine["kind"] in ("amx-cpu", "cpu", "h100", "h200", "gpu")
        assert isinstance(record["hand_run"], bool)
        assert record["figures"]
        for name, value in record["figures"].items():
            if isinstance(value, dict):
                assert set(value) <= FIGURE_KEYS and ({"median", "value"} & set(value)), (path.name, name)
            else:
                assert isinstance(value, (int, float, str)), (path.name, name)


def test_no_benchmark_writes_results_md_any_more():
    assert not (ROOT / "benchmarks" / "RESULTS.md").exists()
    for script in (ROOT / "benchmarks").glob("*.py"):
        assert "RESULTS.md" not in script.read_text(), script.name


def slug(heading: str) -> str:
    """The anchor MkDocs gives a heading (Python-Markdown's toc slugify), or its { #id }."""
    given = re.search(r"\{\s*#([\w.-]+)\s*\}\s*$", heading)
    if given:
        return given[1]
    text = unicodedata.normalize("NFKD", heading).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    return {slug(m[1]) for m in re.finditer(r"^#{1,6} (.+)$", text, re.MULTILINE)}


def test_the_readmes_links_lead_to_pages_and_headings_that_exist():
    for target in re.findall(r"\]\(([^)\s]+)\)", README.read_text()):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        page = ROOT / path
        assert page.exists(), target
        if anchor:
            assert anchor in anchors(page), target
