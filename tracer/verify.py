"""Recompute an exported workbook with LibreOffice and compare every formula cell with the engine.

For each formula cell with spreadsheet value y and engine value x:
  both non-finite / error      agree (an error cell is where the engine has inf or NaN)
  one error, one finite        disagree
  both numbers                 rel = |x − y| / max(|x|, |y|, floor)
floor = 1e-5 × the largest finite |x| of the same column within the same step: the absolute
floor for cancellation (LibreOffice rounds a − b to 0 when a and b agree to ~15 digits, so
1 − σ for σ within 4e-15 of 1 is 0 there and ~1e-15 in the engine). A cell disagrees when
rel > 1e-9.
"""
from dataclasses import dataclass, field
import math
from pathlib import Path
import tempfile

from openpyxl import load_workbook
from openpyxl.utils import get_column_letter

from . import libreoffice
from .workbook import writer

TOLERANCE = 1e-9
FLOOR = 1e-5


@dataclass
class Mismatch:
    where: str
    header: str
    engine: float
    sheet: object


@dataclass
class Report:
    cells: int = 0
    worst: float = 0.0
    worst_where: str = ""
    mismatches: list = field(default_factory=list)
    errors_matched: int = 0

    @property
    def ok(self):
        return not self.mismatches

    def summary(self):
        text = (f"compared {self.cells:,} formula cells with the engine ({self.errors_matched:,} error cells where the "
                f"engine is non-finite); largest relative difference {self.worst:.3e}"
                + (f" at {self.worst_where}" if self.worst_where else ""))
        if self.mismatches:
            first = self.mismatches[0]
            text += (f"\n{len(self.mismatches):,} cell(s) disagree beyond {TOLERANCE:g}; first: {first.where} "
                     f"({first.header}) engine {first.engine!r}, LibreOffice {first.sheet!r}")
        return text


def _is_error(value):
    return isinstance(value, str) and (value.startswith("#") or value.startswith("Err:"))


def engine_value(trace, key, row):
    """The engine's value of quantity `key` in layout row `row`."""
    name = key[0]
    if name == "loss":
        return trace.sample_loss[row.step, row.slot] if row.kind == "sample" else trace.loss[row.step]
    if name in ("grad_norm", "clip_factor"):
        return getattr(trace, name)[row.step]
    layer, index = key[1], key[2]
    if name == "x":
        return trace.scenario.inputs[row.sample, index]
    if name == "t":
        return trace.scenario.targets[row.sample, index]
    if name in ("u", "a", "slope", "delta"):
        return getattr(trace, name)[layer - 1][row.step, row.slot, index]
    if name == "dE_da":
        return trace.output_error[row.step, row.slot, index]
    if name in ("grad_W", "grad_b"):
        store = getattr(trace, name + "_sample") if row.kind == "sample" else getattr(trace, name)
        where = (row.step, row.slot) if row.kind == "sample" else (row.step,)
        return store[layer - 1][where + tuple(index)]
    store = {"W": trace.W, "b": trace.b, "update_W": trace.update_W, "update_b": trace.update_b}[name]
    return store[layer - 1][(row.step,) + tuple(index)]


def _compare(report, pairs):
    """Compare one block of (where, header, column id, engine, sheet) tuples, sharing column floors."""
    scale = {}
    for _, _, column, x, _ in pairs:
        if math.isfinite(x):
            scale[column] = max(scale.get(column, 0.0), abs(x))
    for where, header, column, x, y in pairs:
        report.cells += 1
        engine_finite = math.isfinite(x)
        if _is_error(y) or y is None or isinstance(y, str):
            if not engine_finite and _is_error(y):
                report.errors_matched += 1
            else:
                report.mismatches.append(Mismatch(where, header, x, y))
            continue
        if not engine_finite:
            report.mismatches.append(Mismatch(where, header, x, y))
            continue
        floor = max(FLOOR * scale.get(column, 0.0), 1e-300)
        rel = abs(x - y) / max(abs(x), abs(y), floor)
        if rel > report.worst:
            report.worst, report.worst_where = rel, f"{where} ({header})"
        if rel > TOLERANCE:
            report.mismatches.append(Mismatch(where, header, x, y))


def compare(trace, layout, recomputed, parameters=()):
    """Compare the recomputed workbook at `recomputed` with `trace`, cell by cell."""
    report = Report()
    book = load_workbook(recomputed, read_only=True, data_only=True)
    try:
        _compare_trace(report, trace, layout, book["Trace"])
        for table in writer.table_layouts(trace, layout, parameters, findings=[]):
            _compare_table(report, table, book[table.title])
    finally:
        book.close()
    return report


def _compare_trace(report, trace, layout, sheet):
    columns = layout.columns
    formulas = {
        "sample": [(i, c) for i, c in enumerate(columns) if c.sample],
        "total": [(i, c) for i, c in enumerate(columns) if c.total],
        "final": [(i, c) for i, c in enumerate(columns) if c.final],
    }
    rows = sheet.iter_rows(min_row=3, max_col=len(columns), values_only=True)
    block, current = [], None
    for row, values in zip(layout.rows(), rows):
        if row.step != current:
            _compare(report, block)
            block, current = [], row.step
        first_parameters = row.kind == "total" and row.places["q"] is None
        for index, column in formulas[row.kind]:
            if first_parameters and column.final:
                continue  # step 0 parameters are constants
            value = values[index] if index < len(values) else None
            block.append((f"Trace!{column.letter}{row.number}", column.header, index,
                          float(engine_value(trace, column.key, row)), value))
    _compare(report, block)


def _compare_table(report, table, sheet):
    """Compare a table sheet (Steps, Diagnosis, ChainRule) with its expected values; rows with the
    same block key (a step; a parameter and step) share the cancellation floor of each column."""
    headers = [h for h, _, _ in table.headers()]
    rows = sheet.iter_rows(min_row=table.header_rows + 1, max_col=len(headers), values_only=True)
    block, current = [], None
    for number, ((key, expected), values) in enumerate(zip(table.expected(), rows), start=table.header_rows + 1):
        if key != current:
            _compare(report, block)
            block, current = [], key
        for index, x in expected.items():
            y = values[index] if index < len(values) else None
            where = f"{table.title}!{get_column_letter(index + 1)}{number}"
            if isinstance(x, str):
                report.cells += 1
                if (y or "") != x:
                    report.mismatches.append(Mismatch(where, headers[index], x, y))
            else:
                block.append((where, headers[index], index, float(x), y))
    _compare(report, block)


def verify(trace, workbook_path=None, parameters=()):
    """Export (unless given), recompute with LibreOffice, compare; return the Report."""
    with tempfile.TemporaryDirectory(prefix="tracer-verify-") as folder:
        if workbook_path is None:
            workbook_path = Path(folder) / f"{trace.scenario.name}.xlsx"
            layout = writer.write(trace, workbook_path, parameters=parameters)
        else:
            layout = writer.build_layout(trace)
        recomputed = libreoffice.convert(workbook_path, "xlsx", Path(folder) / "recomputed")
        return compare(trace, layout, recomputed, parameters)
