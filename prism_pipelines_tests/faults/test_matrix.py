"""docs/reliability.md's fault matrix is the one the suite asserts (matrix.py)."""

from __future__ import annotations

from pathlib import Path

from prism_pipelines_tests.faults.matrix import render_doc

DOC = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"


def test_the_reliability_doc_shows_the_matrix_the_suite_asserts():
    assert render_doc() in DOC.read_text(), (
        "docs/reliability.md's Fault matrix differs from what the fault suite asserts: replace "
        "its two sections with `python -m prism_pipelines_tests.faults.matrix`"
    )
