"""Native charts on the Steps sheet: loss, gradient norms and log10|w| per step.

Honest lines: no smoothing (a smoothed curve shows dips that never happened), non-finite steps
as gaps (the Steps cells are #N/A there; blanks are gaps too), a readable number of x labels,
and the axis labels at the low end of the plot even when the values are negative.
LibreOffice (7.4) leaves #N/A points out only when the plotted range also holds an empty cell
(otherwise it draws them as 0): each range ends with the empty row below the table.
"""
import math

import numpy as np
from openpyxl.chart import LineChart, Reference
from openpyxl.chart.data_source import NumFmt
from openpyxl.utils import get_column_letter

MAX_LABELS = 12   # x-axis labels along a chart 16 cm wide


def _spans_decades(values):
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return values.size > 1 and (values > 0).all() and values.max() / values.min() > 100


def tick_skip(steps, labels=MAX_LABELS):
    """Label every k-th step, k in 1, 2, 5, 10, 20, 50, …: at most `labels` labels."""
    target = max(1, math.ceil(steps / labels))
    for magnitude in (10 ** e for e in range(0, 12)):
        for factor in (1, 2, 5):
            if factor * magnitude >= target:
                return factor * magnitude
    return target


def _line_chart(sheet, title, y_title, first_column, last_column, rows, log=False):
    chart = LineChart()
    chart.title, chart.y_axis.title, chart.x_axis.title = title, y_title, "step"
    chart.height, chart.width = 7.5, 16
    data = Reference(sheet, min_col=first_column, max_col=last_column, min_row=1, max_row=rows + 2)
    chart.add_data(data, titles_from_data=True)
    chart.set_categories(Reference(sheet, min_col=1, min_row=2, max_row=rows + 2))
    for series in chart.series:
        series.smooth = False
    chart.display_blanks = "gap"
    chart.x_axis.delete = False
    chart.x_axis.axPos = "b"
    chart.y_axis.delete = False
    skip = tick_skip(rows)
    chart.x_axis.tickLblSkip = chart.x_axis.tickMarkSkip = skip
    chart.x_axis.tickLblPos = chart.y_axis.tickLblPos = "low"
    if log:
        chart.y_axis.scaling.logBase = 10
        chart.y_axis.numFmt = NumFmt(formatCode="0E+00", sourceLinked=False)   # 1E+06, not 1000000
    return chart


def prepare(sheet):
    """Print the charts' sheet landscape and one page wide, the charts beside the table's first
    rows (call before the sheet's first row: a write-only sheet writes its properties then)."""
    sheet.page_setup.orientation = "landscape"
    sheet.sheet_properties.pageSetUpPr.fitToPage = True
    sheet.page_setup.fitToWidth, sheet.page_setup.fitToHeight = 1, 0


def add(sheet, trace):
    """Place the three charts to the right of the Steps table."""
    layers, steps = trace.layers, trace.steps
    anchor_column = 2 + 2 * layers + 2
    letter = get_column_letter(anchor_column)
    norms = np.concatenate([trace.gradient_norm(l) for l in range(1, layers + 1)])
    loss = _line_chart(sheet, "Loss E per step", "E", 2, 2, steps, log=_spans_decades(trace.loss))
    sheet.add_chart(loss, f"{letter}2")
    gradient = _line_chart(sheet, "Gradient norm per layer", "‖∇‖", 3, 2 + layers, steps, log=_spans_decades(norms))
    sheet.add_chart(gradient, f"{letter}18")
    weights = _line_chart(sheet, "log10|w| per step", "log10|w|", 3 + layers, 2 + 2 * layers, steps)
    sheet.add_chart(weights, f"{letter}34")
