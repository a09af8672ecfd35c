"""The bench report's HTML comes from the packaged Jinja2 template and escapes what it shows."""

from __future__ import annotations

import fnmatch
import sys
from pathlib import Path

import pytest

from priormim.benchmark.budgets import get_budget
from priormim.benchmark.collect import BenchResults
from priormim.benchmark.render import render_html, render_markdown
from priormim.benchmark.tables import Table

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[2]


def _results(tmp_path: Path) -> BenchResults:
    png = tmp_path / "comparison.png"
    png.write_bytes(b"\x89PNG fake")
    res = BenchResults(record={"suite": "xca<small>", "pool": {"n": 12}}, budget=get_budget("smoke"), datasets=[],
                       scores=[], stats={}, pretrain=[], clustering=[], cluster_stats={}, masking={},
                       failures=[("finetune/x/mae/seed0", "boom <b>")], figures={"comparison": png})
    for key in ("comparison", "ablation", "clustering", "masking"):
        res.tables[key] = Table(f"{key} & more", ["Method", "DSC"], [["mae", "0.5"], ["vasomim", "0.7"]],
                                note="a < b", bold={(1, 1)}, shade={(0, 1): 0.0, (1, 1): 1.0})
    return res


def test_report_html_renders_tables_figures_and_failures_escaped(tmp_path):
    res = _results(tmp_path)
    timings = Table("Compute", ["Method", "Total"], [["total", "1.0s"]])
    page = render_html(res, timings, "2024-01-01 00:00 UTC")
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert "<title>priormim bench: xca&lt;small&gt;</title>" in page  # autoescape
    assert "<h3>comparison &amp; more</h3><table><thead><tr><th>Method</th><th>DSC</th></tr></thead>" in page
    assert '<td style="background: rgba(46, 134, 222, 0.50)"><b>0.7</b></td>' in page  # bold best, shaded
    assert '<td style="background: rgba(46, 134, 222, 0.08)">0.5</td>' in page
    assert '<p class="note">a &lt; b</p>' in page
    assert page.count("data:image/png;base64,") == 1 and "iVBORyBmYWtl" in page  # base64 of the file
    assert "<li><code>finetune/x/mae/seed0</code>: boom &lt;b&gt;</li>" in page
    assert "pretraining pool 12 images · generated 2024-01-01 00:00 UTC" in page
    md = render_markdown(res, timings, "now")
    assert md.startswith("# priormim bench: xca<small>, budget smoke") and "| vasomim | **0.7** |" in md


def test_report_template_is_package_data():
    """A non-editable install ships the template: pyproject's package-data globs match it."""
    template = ROOT / "src" / "priormim" / "benchmark" / "templates" / "report.html.j2"
    assert template.is_file()
    with open(ROOT / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)
    globs = project["tool"]["setuptools"]["package-data"]["priormim"]
    rel = template.relative_to(ROOT / "src" / "priormim").as_posix()
    assert any(fnmatch.fnmatch(rel, g) for g in globs)
    assert any(dep.lower().startswith("jinja2") for dep in project["project"]["dependencies"])
