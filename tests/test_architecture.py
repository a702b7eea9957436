"""The layout keeps its shape (issue 13): numbers measured from the source
by tests/architecture.py, so they stay true as the code grows."""

from __future__ import annotations

from tests.architecture import MAX_LOCAL_IMPORTS_PER_KLOC, measure


def test_the_layout_has_no_import_cycle_and_no_upward_import():
    report = measure()
    assert report.cycles == []
    assert report.upward == []  # orchestrator never imports tasks


def test_only_the_composition_roots_read_settings():
    """Below the roots, settings arrive as arguments (tests/architecture.py
    lists the modules allowed to call get_settings())."""
    assert measure().settings_calls == []


def test_imports_inside_functions_stay_rare():
    assert measure().local_per_kloc <= MAX_LOCAL_IMPORTS_PER_KLOC


def test_no_module_or_function_outgrows_its_limit():
    report = measure()
    assert report.big_modules == []
    assert report.big_functions == []
