"""The Histograms sheet: log10|value| bins per layer and step, recomputed by LibreOffice."""
import numpy as np
import pytest
from openpyxl import load_workbook

from tracer.training import engine, scenario as scenario_module
from tracer.workbook import histograms, writer


def test_counts_put_zero_tiny_decades_and_nonfinite_apart():
    values = np.array([0.0, 1e-20, 5e-3, -2e-3, 3.0, np.inf, np.nan])
    edges = [-3, -2, -1, 0, 1]
    tol, zero, *bins, bad = histograms.counts(values, edges)
    assert tol == pytest.approx(3e-9) and zero == 2 and bad == 2
    assert bins == [2, 0, 0, 1]      # [1e-3,1e-2): 5e-3 and -2e-3; [1,10): 3


def _run_and_workbook(name, folder):
    """The trace (verified by the session) and its workbook (recomputed by the session)."""
    trace = engine.run(scenario_module.load(name))
    path = folder / f"{name}-histograms.xlsx"
    writer.write(trace, path)
    return [trace, path]


@pytest.mark.libreoffice(workbooks=_run_and_workbook)
@pytest.mark.parametrize("name", ["leaky-relu-explosion", "sigmoid-vanishing"])
def test_histogram_cells_match_libreoffice_and_show_the_cliff(recomputed, name):
    verified, recomputed = recomputed
    trace, report = verified.trace, verified.report
    layout = writer.build_layout(trace)
    assert report.ok, report.summary()
    table = next(t for t in writer.table_layouts(trace, layout, findings=[]) if t.title == "Histograms")
    book = load_workbook(recomputed, read_only=True, data_only=True)
    rows = list(book["Histograms"].iter_rows(min_row=2, values_only=True))
    book.close()
    first = table.first_column(("gradient", 1)) - 1     # 0-based: tol, 0, decades..., non-finite
    width = len(table.labels)
    for step, row in enumerate(rows):
        gradients = np.concatenate([trace.grad_W[0][step].ravel(), trace.grad_b[0][step].ravel()])
        cells = row[first:first + width]
        assert cells[-1] == int((~np.isfinite(gradients)).sum())          # the non-finite bin
        assert sum(cells[1:]) == gradients.size                           # every value in one bin
    if name == "leaky-relu-explosion":
        assert rows[4][first + width - 1] == trace.grad_W[0][4].size + trace.grad_b[0][4].size   # the cliff
    else:
        assert rows[0][first + 1] == int((trace.grad_W[0][0] == 0).sum() + (trace.grad_b[0][0] == 0).sum())
