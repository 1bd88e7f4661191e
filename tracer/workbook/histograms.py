"""The Histograms sheet: per step, for every layer, how many gradients and how many parameters
fall in each bin of log10|value|, as live COUNTIFS formulas over the Trace sheet's Σ row.

Per layer, step and quantity (R: the Σ-row range), with M the largest finite |value| of R:
  tol          ZERO · M   =ZERO*MAX(IFERROR(MAXIFS(R,R,">0"),0),IFERROR(-MINIFS(R,R,"<0"),0))  (error
               cells skipped; Gnumeric's MAXIFS/MINIFS give #DIV/0! where nothing matches)
  0            |value| ≤ tol: zero up to rounding (a sum that cancels is exactly 0 in a spreadsheet,
               which rounds a − b to 0 when they agree to ~15 digits, and ~1e-17 in numpy)
  [1eA,1eB)    10^A ≤ |value| < 10^B and |value| > tol (A, B edges that cover every such |value|
               of the run in at most MAX_BINS bins of equal width in decades)
               COUNTIFS(R,">=1EA",R,"<1EB",R,">"&tol) + COUNTIFS(R,"<=-1EA",R,">-1EB",R,"<"&-tol)
  non-finite   inf or NaN: error cells       COLUMNS(R) − COUNT(R) (COUNT skips error cells)
A stacked column chart per layer shows the distribution move step by step: the "cliff" of an
exploding run (all mass jumps to the top bins, then to non-finite) and the slide toward 0 of a
vanishing one.
"""
import math

import numpy as np
from openpyxl.chart import BarChart, Reference
from openpyxl.utils import get_column_letter as _letter

from tracer import layers
from tracer.maths import notation

MAX_BINS = 12
ZERO = 1e-9      # |value| at most this fraction of the largest |value| of its group counts as 0 (rounding)


def tolerance(values):
    """ZERO × the largest finite |value| (0 when there is none)."""
    values = np.asarray(values, dtype=float).ravel()
    finite = values[np.isfinite(values)]
    return ZERO * float(np.max(np.abs(finite))) if finite.size else 0.0


def decade_edges(groups):
    """Exponents A_0 < A_1 < ... of the bin edges 10^A covering every finite |value| above the
    tolerance of its group (groups: arrays)."""
    kept = []
    for values in groups:
        values = np.abs(np.asarray(values, dtype=float).ravel())
        values = values[np.isfinite(values)]
        kept.append(values[values > tolerance(values)])
    magnitudes = np.concatenate(kept) if kept else np.zeros(0)
    if magnitudes.size == 0:
        return [0, 1]
    low = math.floor(math.log10(magnitudes.min()))
    while low > -330 and _power(low) > magnitudes.min():
        low -= 1
    high = math.floor(math.log10(magnitudes.max())) + 1
    while _power(high) <= magnitudes.max():
        high += 1
    width = max(1, math.ceil((high - low) / MAX_BINS))
    bins = math.ceil((high - low) / width)
    return [low + k * width for k in range(bins + 1)]


def _power(exponent):
    """10^exponent exactly as a spreadsheet parses the literal 1E<exponent>."""
    return float(f"1e{exponent}")


def _bounds(span, low, high):
    """The COUNTIFS criteria 10^low ≤ |x| < 10^high for x > 0 and for x < 0 (each ending in a comma);
    an edge a spreadsheet cannot parse as a normal double (10^309 is infinite, 10^-330 is 0) is
    left out: every finite |value| is below the one and above the other, as in `counts`."""
    positive, negative = "", ""
    if _power(low) >= 2.2250738585072014e-308:
        positive += f'{span},">=1E{low}",'
        negative += f'{span},"<=-1E{low}",'
    if math.isfinite(_power(high)):
        positive += f'{span},"<1E{high}",'
        negative += f'{span},">-1E{high}",'
    return positive, negative


def counts(values, edges):
    """[tol, zero, one count per decade bin, non-finite] of an array of values."""
    values = np.asarray(values, dtype=float).ravel()
    finite = np.isfinite(values)
    magnitude = np.abs(np.where(finite, values, 0.0))
    tol = tolerance(values)
    result = [tol, int((finite & (magnitude <= tol)).sum())]
    for low, high in zip(edges, edges[1:]):
        result.append(int((finite & (magnitude > tol) & (magnitude >= _power(low)) & (magnitude < _power(high))).sum()))
    result.append(int((~finite).sum()))
    return result


class HistogramLayout:
    """Table-sheet protocol (see steps.StepsLayout): one row per step, a group of bin columns per
    layer for the batch gradients ∇⁽ˡ⁾ (W and b) and one for the parameters θ⁽ˡ⁾ used at the step."""

    title = "Histograms"
    header_rows = 1

    def __init__(self, trace, trace_layout, steps_layout):
        self.trace, self.layout = trace, trace_layout
        self.layers = trace.layers
        self.edges = decade_edges([self._values(step, group) for step in range(trace.steps) for group in self.groups()])
        self.labels = ["tol", "0"] + [f"[1e{a},1e{b})" for a, b in zip(self.edges, self.edges[1:])] + ["non-finite"]

    def groups(self):
        """(quantity, layer) of each column group, in sheet order."""
        return [(quantity, l) for quantity in ("gradient", "weight") for l in range(1, self.layers + 1)]

    def _values(self, step, group):
        """The group's values at `step` (the Σ row's cells, in sheet order)."""
        t, (quantity, l) = self.trace, group
        layer = t.scenario.layers[l - 1]
        names = getattr(layers.of(layer), "stored_params", ("W", "b"))   # W, b (recurrent cells: W, b, Wh, bh)
        prefix = "grad_" if quantity == "gradient" else ""
        return np.concatenate([getattr(t, prefix + name)[l - 1][step].ravel() for name in names])

    def headers(self):
        heads = [("step", "training step t", 7)]
        for quantity, l in self.groups():
            symbol = f"∇{notation.layer(l)}" if quantity == "gradient" else f"θ{notation.layer(l)}"
            what = (f"batch gradients of W{l} and b{l}" if quantity == "gradient"
                    else f"parameters W{l} and b{l} used at the step")
            heads.append((f"{symbol} tol", f"{ZERO:g} × the largest finite |value| of the {what}: at most this counts as 0", 11))
            for label in self.labels[1:]:
                heads.append((f"{symbol} {label}", f"how many {what} have |value| in {label} (Trace Σ row)", 11))
        return heads

    def first_column(self, group):
        """1-based sheet column of the first bin of `group`."""
        return 2 + self.groups().index(group) * len(self.labels)

    def rows(self):
        for step in range(self.trace.steps):
            row = [self.trace.first_step + step]
            for group in self.groups():
                quantity, l = group
                span = self.layout.parameter_range(l, step, "grad_" if quantity == "gradient" else "")
                tol = f"{_letter(self.first_column(group))}{step + 2}"
                row.append(f'={ZERO!r}*MAX(IFERROR(_xlfn.MAXIFS({span},{span},">0"),0),IFERROR(-_xlfn.MINIFS({span},{span},"<0"),0))')
                row.append(f'=COUNTIFS({span},">="&-{tol},{span},"<="&{tol})')
                for low, high in zip(self.edges, self.edges[1:]):
                    positive, negative = _bounds(span, low, high)
                    row.append(f'=COUNTIFS({positive}{span},">"&{tol})+COUNTIFS({negative}{span},"<"&-{tol})')
                row.append(f"={self.layout.range_size(span)}-COUNT({span})")
            yield row

    def expected(self):
        for step in range(self.trace.steps):
            values = []
            for group in self.groups():
                values += counts(self._values(step, group), self.edges)
            yield step, {index: float(v) for index, v in enumerate(values, start=1)}


def add_charts(sheet, table, most=4):
    """Stacked columns of the bins per step for the first and the last layer's gradients and parameters."""
    steps = table.trace.steps
    layers = sorted({1, table.layers})
    anchor = _letter(len(table.headers()) + 2)
    place = 0
    for quantity in ("gradient", "weight"):
        for l in layers:
            if place >= most:
                return
            first = table.first_column((quantity, l)) + 1   # the bins, after the tolerance
            chart = BarChart()
            chart.type, chart.grouping, chart.overlap = "col", "stacked", 100
            chart.title = (f"Layer {l} {'gradients' if quantity == 'gradient' else 'parameters'}: "
                           "count per bin of log10|value|")
            chart.y_axis.title, chart.x_axis.title = "count", "step"
            chart.height, chart.width = 7.5, 18
            data = Reference(sheet, min_col=first, max_col=first + len(table.labels) - 2, min_row=1, max_row=steps + 1)
            chart.add_data(data, titles_from_data=True)
            chart.set_categories(Reference(sheet, min_col=1, min_row=2, max_row=steps + 1))
            chart.x_axis.delete = False
            chart.y_axis.delete = False
            sheet.add_chart(chart, f"{anchor}{2 + 16 * place}")
            place += 1
