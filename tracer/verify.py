"""Recompute an exported workbook with LibreOffice and compare every formula cell with the engine.

For each formula cell with spreadsheet value y and engine value x:
  both non-finite / error      agree (an error cell is where the engine has inf or NaN)
  one error, one finite        disagree
  both numbers                 rel = |x − y| / max(|x|, |y|, floor)
floor = 1e-5 × the larger of the largest finite |x| of the same column within the same step
and the largest |value| among the cells the formula reads (its operands): the absolute floor
for cancellation. LibreOffice rounds a − b to 0 when a and b agree to ~15 digits, so 1 − σ
for σ within 4e-15 of 1 is 0 there and ~1e-15 in the engine; such a difference is tiny next
to the operands, never next to the result. A cell disagrees when rel > 1e-9.
"""
from dataclasses import dataclass, field
import math
import re
from pathlib import Path
import tempfile

import numpy as np
from openpyxl import load_workbook
from openpyxl.utils import get_column_letter

from . import libreoffice, output
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
    if name == "step":
        return float(trace.first_step + row.step)
    if name == "sample":
        return float(row.sample) if row.sample is not None else 0.0
    if name == "loss":
        return trace.sample_loss[row.step, row.slot] if row.kind == "sample" else trace.loss[row.step]
    if name in ("grad_norm", "clip_factor", "lr"):
        return getattr(trace, name)[row.step]
    if (name.rsplit("_", 1)[0], name[-1]) in trace.state:
        return trace.state[(name.rsplit("_", 1)[0], name[-1])][key[1] - 1][(row.step,) + tuple(key[2])]
    layer, index = key[1], key[2]
    if name == "x":
        return trace.scenario.inputs[row.sample, index]
    if name == "t":
        return trace.scenario.targets[row.sample, index]
    if name in ("xhat", "dxhat"):
        return trace.norm[name][layer - 1][row.step, row.slot, index]
    if name in ("bn_mean", "bn_var", "bn_m1", "bn_m2"):
        return trace.norm[name[3:]][layer - 1][row.step, index]
    if name in ("u", "a", "slope", "delta", "h", "e"):
        store = trace.error if name == "e" else getattr(trace, name)
        return store[layer - 1][row.step, row.slot, index]
    if name == "dE_da":
        return trace.output_error[row.step, row.slot, index]
    if name in ("grad_W", "grad_b"):
        store = getattr(trace, name + "_sample") if row.kind == "sample" else getattr(trace, name)
        where = (row.step, row.slot) if row.kind == "sample" else (row.step,)
        return store[layer - 1][where + tuple(index)]
    store = {"W": trace.W, "b": trace.b, "update_W": trace.update_W, "update_b": trace.update_b}[name]
    return store[layer - 1][(row.step,) + tuple(index)]


def _compare(report, pairs):
    """Compare one block of (where, header, column id, engine, sheet[, operand scale]) tuples,
    sharing column floors."""
    scale = {}
    for pair in pairs:
        column, x = pair[2], pair[3]
        if math.isfinite(x):
            scale[column] = max(scale.get(column, 0.0), abs(x))
    for pair in pairs:
        where, header, column, x, y = pair[:5]
        operands = pair[5] if len(pair) > 5 else 0.0
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
        floor = max(FLOOR * max(scale.get(column, 0.0), operands), 1e-300)
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


_REFERENCE = re.compile(r"(?<![!A-Za-z_])([A-Z]{1,3})\{([rpqfl])\}")


def _operands(layout):
    """Per column and row kind: the (column, placeholder) pairs its formula reads on the Trace sheet."""
    by_letter = {c.letter: c for c in layout.columns}
    found = {}
    for index, column in enumerate(layout.columns):
        for kind, template in (("sample", column.sample), ("total", column.total), ("final", column.final)):
            if template:
                found[(index, kind)] = [(by_letter[letter], where) for letter, where in _REFERENCE.findall(template)
                                        if letter in by_letter]
    return found


def _compare_trace(report, trace, layout, sheet):
    columns = layout.columns
    formulas = {
        "sample": [(i, c) for i, c in enumerate(columns) if c.sample],
        "total": [(i, c) for i, c in enumerate(columns) if c.total],
        "final": [(i, c) for i, c in enumerate(columns) if c.final],
    }
    operands = _operands(layout)
    rows = sheet.iter_rows(min_row=3, max_col=len(columns), values_only=True)
    block, previous_total, carried = [], None, {}
    for row, values in zip(layout.rows(), rows):
        block.append((row, values))
        if row.kind == "sample":
            continue
        pairs, carried = _block_pairs(trace, block, formulas, operands, row, previous_total, carried)
        _compare(report, pairs)
        previous_total, block = (row if row.kind == "total" else previous_total), []


def _block_pairs(trace, block, formulas, operands, closing, previous_total, carried):
    """(where, header, column, engine, sheet, scale) for the formula cells of one step's rows,
    and the scales of its Σ row to carry into the next step.

    scale is the largest magnitude that flowed into the cell: its operands' values and, passed
    on through the dependency graph (within the step, and from the previous Σ row), their
    operands' — the base of the cancellation floor."""
    samples = [r for r, _ in block if r.kind == "sample"]
    cells, index_of = [], {}
    for current, values in block:
        first_parameters = current.kind == "total" and current.places["q"] is None
        for index, column in formulas[current.kind]:
            if first_parameters and column.final:
                continue  # the first step's parameters are constants
            index_of[(current.number, index)] = len(cells)
            cells.append((current, index, column, values[index] if index < len(values) else None))
    engine = np.array([float(engine_value(trace, column.key, current)) for current, _, column, _ in cells])
    with np.errstate(all="ignore"):
        scale = np.where(np.isfinite(engine), np.abs(engine), 0.0)
    sources = []
    for current, index, column, _ in cells:
        places = {"r": current, "p": closing if closing.kind == "total" else None, "q": previous_total}
        inside, fixed = [], 0.0
        for source, where in operands[(index, current.kind)]:
            for source_row in (samples if where in "fl" else [places[where]]):
                if source_row is None:
                    continue
                position = index_of.get((source_row.number, source.index))
                if position is not None:
                    inside.append(position)
                else:
                    with np.errstate(all="ignore"):
                        value = abs(float(engine_value(trace, source.key, source_row)))
                    value = value if math.isfinite(value) else 0.0
                    if where == "q":
                        value = max(value, carried.get(source.index, 0.0))
                    fixed = max(fixed, value)
        sources.append((inside, fixed))
    flowed = np.array([max(fixed, max((scale[i] for i in inside), default=0.0)) for inside, fixed in sources])
    for _ in range(8):  # pass magnitudes along the step's chains (x → u → a → … → δ → g → Δθ)
        updated = np.array([max(flowed[k], max((flowed[i] for i in inside), default=0.0))
                            for k, (inside, _) in enumerate(sources)])
        if np.array_equal(updated, flowed):
            break
        flowed = updated
    pairs = [(f"Trace!{column.letter}{current.number}", column.header, index, float(x), value, float(f))
             for (current, index, column, value), x, f in zip(cells, engine, flowed)]
    closing_scales = {index: float(f) for (current, index, _, _), f in zip(cells, flowed) if current is closing}
    return pairs, closing_scales


def _compare_table(report, table, sheet):
    """Compare a table sheet (Steps, Diagnosis, ChainRule) with its expected values; rows with the
    same block key (a step; a parameter and step) share the cancellation floor of each column. An
    expected value may be (value, operand magnitude) when the cell's operands are larger than it."""
    headers = [h for h, _, _ in table.headers()]
    rows = sheet.iter_rows(min_row=table.header_rows + 1, max_col=len(headers), values_only=True)
    block, current = [], None
    for number, ((key, expected), values) in enumerate(zip(table.expected(), rows), start=table.header_rows + 1):
        if key != current:
            _compare(report, block)
            block, current = [], key
        numbers = [abs(float(x)) for x in expected.values() if not isinstance(x, (str, tuple)) and math.isfinite(float(x))]
        row_scale = max(numbers, default=0.0) if getattr(table, "row_floor", False) else 0.0
        for index, x in expected.items():
            scale = row_scale
            if isinstance(x, tuple):   # (value, magnitude of its operands): the cancellation floor of this cell
                x, scale = x
            y = values[index] if index < len(values) else None
            where = f"{table.title}!{get_column_letter(index + 1)}{number}"
            if isinstance(x, str):
                report.cells += 1
                if (y or "") != x:
                    report.mismatches.append(Mismatch(where, headers[index], x, y))
            else:
                block.append((where, headers[index], index, float(x), y, scale))
    _compare(report, block)


def verify(trace, workbook_path=None, parameters=()):
    """Export (unless given), recompute with LibreOffice, compare; return the Report."""
    with tempfile.TemporaryDirectory(prefix="tracer-verify-") as folder:
        if workbook_path is None:
            workbook_path = Path(folder) / output.safe_file_name(trace.scenario.name, ".xlsx")
            layout = writer.write(trace, workbook_path, parameters=parameters)
        else:
            layout = writer.build_layout(trace)
        recomputed = libreoffice.convert(workbook_path, "xlsx", Path(folder) / "recomputed")
        return compare(trace, layout, recomputed, parameters)
