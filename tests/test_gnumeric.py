"""Gnumeric as a second spreadsheet engine: every template's workbook, over its first STEPS steps
where they are finite, recomputed by `ssconvert --recalc` equals the engine cell for cell (Trace,
Steps, Diagnosis, ChainRule, Histograms), by the same comparison as `tracer verify`. (LibreOffice
verifies every template at its full length: tests/test_workbook.py.)"""
import pytest

from tracer.training import engine, scenario as scenario_module, templates
from tracer.recalc import gnumeric
from tracer.errors import TracerError
from tracer.workbook import diagnosis as diagnosis_sheet, writer


STEPS = 10   # at most: every formula of a run appears in its first steps; the workbooks stay small


def _first_steps(name):
    scenario = scenario_module.load(name)
    return engine.run(scenario_module.load(name, steps=min(scenario.steps, STEPS)))


def _finite(name):
    return _first_steps(name).first_nonfinite_step() is None


FINITE = [name for name in templates.names() if name not in templates.LARGE and _finite(name)]


def test_the_finite_templates():
    assert "xor" in FINITE and "sigmoid-vanishing" in FINITE and "leaky-relu-explosion" not in FINITE


@pytest.mark.gnumeric(workbooks=_first_steps)
@pytest.mark.parametrize("name", FINITE)
def test_every_finite_template_recomputes_in_gnumeric(recomputed, name):
    report = recomputed.report
    assert report.ok, report.summary()
    assert report.spreadsheet == "Gnumeric"
    for sheet in ("Trace", "Steps", "Diagnosis", "ChainRule", "Histograms"):
        assert report.cells_by_sheet.get(sheet, 0) > 0, (sheet, report.cells_by_sheet)


def test_diagnosis_values_that_gnumeric_must_reproduce():
    """The Diagnosis cells compared above are not all blank: flags and saturation counts occur."""
    flags, saturated = set(), 0.0
    for name in ("sigmoid-vanishing", "deep-sigmoid"):
        trace = engine.run(scenario_module.load(name))
        layout = writer.build_layout(trace)
        table = next(t for t in writer.table_layouts(trace, layout, findings=[]) if t.title == "Diagnosis")
        for _, values in table.expected():
            flags |= {v for v in values.values() if isinstance(v, str)}
            saturated += sum(values[k] for k in range(2 * trace.layers + 1, 3 * trace.layers + 1))   # saturated⁽ˡ⁾
    assert "vanishing" in flags and saturated > 0


def test_diagnosis_formulas_avoid_forms_gnumeric_cannot_evaluate():
    trace = engine.run(scenario_module.load("xor", steps=2))
    layout = writer.build_layout(trace)
    steps = next(t for t in writer.table_layouts(trace, layout, findings=[]) if t.title == "Steps")
    table = diagnosis_sheet.DiagnosisLayout(trace, layout, steps, findings=[])
    formulas = [cell for row in table.rows() for cell in row if isinstance(cell, str) and cell.startswith("=")]
    assert formulas and not any("ISERROR(Trace!" in f or "ABS(Trace!" in f for f in formulas)


def test_missing_ssconvert_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(gnumeric.shutil, "which", lambda name: None)
    with pytest.raises(TracerError, match="apt-get install -y --no-install-recommends gnumeric"):
        gnumeric.recalc_many([tmp_path / "a.xlsx"], tmp_path / "out")


@pytest.mark.gnumeric
def test_a_file_that_cannot_be_read_is_named(ssconvert, tmp_path):
    good = tmp_path / "good.xlsx"
    writer.write(engine.run(scenario_module.load("linear-regression", steps=1)), good)
    bad = tmp_path / "broken.xlsx"
    bad.write_bytes(b"PK not a workbook")
    with pytest.raises(TracerError, match="broken.xlsx") as raised:
        gnumeric.recalc_many([good, bad], tmp_path / "out")
    assert "good.xlsx" not in str(raised.value) and (tmp_path / "out" / "good.xlsx").exists()
