"""Native charts on the Steps sheet: loss, gradient norms and log10|w| per step."""
import numpy as np
from openpyxl.chart import LineChart, Reference
from openpyxl.utils import get_column_letter


def _spans_decades(values):
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return values.size > 1 and (values > 0).all() and values.max() / values.min() > 100


def _line_chart(sheet, title, y_title, first_column, last_column, rows, log=False):
    chart = LineChart()
    chart.title, chart.y_axis.title, chart.x_axis.title = title, y_title, "step"
    chart.height, chart.width = 7.5, 16
    data = Reference(sheet, min_col=first_column, max_col=last_column, min_row=1, max_row=rows + 1)
    chart.add_data(data, titles_from_data=True)
    chart.set_categories(Reference(sheet, min_col=1, min_row=2, max_row=rows + 1))
    chart.x_axis.delete = False
    chart.y_axis.delete = False
    if log:
        chart.y_axis.scaling.logBase = 10
    return chart


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
