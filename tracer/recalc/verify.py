"""Recompute exported workbooks with LibreOffice (or Gnumeric) and compare every formula cell with the
engine; many workbooks share one recomputation (`verify_many`).

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
import shutil
import tempfile

import numpy as np
from openpyxl.utils import get_column_letter

from tracer.recalc import gnumeric, libreoffice, xlsxread
from tracer.workbook import matrix as matrix_layout, writer

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
    spreadsheet: str = "LibreOffice"
    cells_by_sheet: dict = field(default_factory=dict)

    def count(self, sheet, cells=1):
        """Count `cells` compared cells of `sheet`."""
        self.cells += cells
        self.cells_by_sheet[sheet] = self.cells_by_sheet.get(sheet, 0) + cells

    @property
    def ok(self):
        return not self.mismatches

    def __repr__(self):
        from tracer import notebook
        return notebook.verify_repr(self)

    def _repr_html_(self):
        from tracer import notebook
        return notebook.verify_html(self)

    def summary(self):
        text = (f"compared {self.cells:,} formula cells with the engine ({self.errors_matched:,} error cells where the "
                f"engine is non-finite); largest relative difference {self.worst:.3e}"
                + (f" at {self.worst_where}" if self.worst_where else ""))
        if self.mismatches:
            first = self.mismatches[0]
            text += (f"\n{len(self.mismatches):,} cell(s) disagree beyond {TOLERANCE:g}; first: {first.where} "
                     f"({first.header}) engine {first.engine!r}, {self.spreadsheet} {first.sheet!r}")
        return text


def _judge(report, sheet_name, x, y, kind, floor, describe):
    """Judge cells in order, vectorised: x the engine's values, y and kind the sheet's (xlsxread
    NUMBER/ERROR/...), floor the cancellation floors. Counts them, matches error cells, keeps the
    largest relative difference and returns the positions of the cells that disagree.
    describe(k) -> (where, header) names cell k."""
    report.count(sheet_name, len(x))
    is_number, engine_finite = kind == xlsxread.NUMBER, np.isfinite(x)
    with np.errstate(all="ignore"):
        rel = np.abs(x - y) / np.maximum(np.maximum(np.abs(x), np.abs(y)), floor)
    rel = np.where(is_number & engine_finite, rel, 0.0)
    error = kind == xlsxread.ERROR
    report.errors_matched += int((error & ~engine_finite).sum())
    if len(x):
        worst = int(np.argmax(rel))
        if rel[worst] > report.worst:
            where, header = describe(worst)
            report.worst, report.worst_where = float(rel[worst]), f"{where} ({header})"
    wrong = np.where(is_number, ~engine_finite | (rel > TOLERANCE), ~(error & ~engine_finite))
    return np.flatnonzero(wrong)


def compare(trace, layout, recomputed, parameters=(), spreadsheet="LibreOffice"):
    """Compare the recomputed workbook at `recomputed` with `trace`, cell by cell (`spreadsheet`
    names the program that recomputed it, for the report)."""
    report = Report(spreadsheet=spreadsheet)
    tables = writer.table_layouts(trace, layout, parameters, findings=[])
    sheets = xlsxread.read_values(recomputed, ["Trace"] + [table.title for table in tables])
    if isinstance(layout, matrix_layout.MatrixLayout):
        matrix_layout.compare(report, trace, layout, sheets["Trace"], _judge, FLOOR, Mismatch)
    else:
        _compare_trace(report, trace, layout, sheets["Trace"])
    for table in tables:
        _compare_table(report, table, sheets[table.title])
    return report


_REFERENCE = re.compile(r"(?<![!A-Za-z_])([A-Z]{1,3})\{([rpqfl])\}")
KINDS = ("sample", "total", "final")


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


class _Rows:
    """The layout's rows as arrays (kind code into KINDS, step, slot, data row, sheet row), split into
    blocks: a step's sample rows closed by its Σ row, and the final row alone."""

    def __init__(self, layout):
        rows = list(layout.rows())
        self.count = len(rows)
        self.kind = np.array([KINDS.index(r.kind) for r in rows], dtype=np.int8)
        self.step = np.array([r.step for r in rows], dtype=np.int64)
        self.slot = np.array([r.slot if r.slot is not None else 0 for r in rows], dtype=np.int64)
        self.sample = np.array([r.sample if r.sample is not None else 0 for r in rows], dtype=np.int64)
        self.number = np.array([r.number for r in rows], dtype=np.int64)
        closing = np.flatnonzero(self.kind != 0)
        self.blocks = list(zip(np.concatenate(([0], closing[:-1] + 1)), closing))   # (first row, closing row)


class _BlockGraph:
    """The formula cells of one block shape and how magnitudes flow into them: edges between the
    block's own formula cells, operands that are constants in the block's rows, and operands on the
    previous Σ row. Built once per shape (sample count, closing kind, first block or not)."""

    def __init__(self, formulas, operands, samples, closing_kind, first):
        local_kinds = ["sample"] * samples + [closing_kind]
        self.cells = []                       # (local row, column index)
        for local, kind in enumerate(local_kinds):
            for index in formulas[kind]:
                if first and kind == "total" and index in formulas["final"]:
                    continue   # the first step's parameters are constants
                self.cells.append((local, index))
        position = {cell: k for k, cell in enumerate(self.cells)}
        inside, fixed, previous = [], [], []
        for k, (local, index) in enumerate(self.cells):
            for source, where in operands[(index, local_kinds[local])]:
                if where == "q":
                    if not first:
                        previous.append((k, source.index))
                    continue
                if where in "fl":
                    sources = range(samples)
                elif where == "r":
                    sources = [local]
                else:
                    sources = [samples] if closing_kind == "total" else []
                for source_row in sources:
                    if (source_row, source.index) in position:
                        inside.append((k, position[(source_row, source.index)]))
                    else:
                        fixed.append((k, source_row, source.index))
        self.row = np.array([c[0] for c in self.cells], dtype=np.int64)
        self.column = np.array([c[1] for c in self.cells], dtype=np.int64)
        pairs = lambda items, n: np.array(items, dtype=np.int64).reshape(-1, n).T  # noqa: E731
        self.inside_to, self.inside_from = pairs(inside, 2)
        self.fixed_to, self.fixed_row, self.fixed_column = pairs(fixed, 3)
        self.previous_to, self.previous_column = pairs(previous, 2)
        self.closing = np.flatnonzero(self.row == samples)


def _engine_matrix(trace, layout, rows):
    """The engine's value of every (row, column) of the Trace sheet, NaN where it has none."""
    matrix = np.full((rows.count, len(layout.columns)), np.nan)
    with np.errstate(all="ignore"):
        for code, kind in enumerate(KINDS):
            where = np.flatnonzero(rows.kind == code)
            if not where.size:
                continue
            for index, column in enumerate(layout.columns):
                try:
                    values = trace.values(column.key, kind, rows.step[where], rows.slot[where], rows.sample[where])
                except (IndexError, KeyError, TypeError, AttributeError):
                    continue   # a quantity this kind of row does not hold (never read)
                matrix[where, index] = np.asarray(values, dtype=float)
    return matrix


def _compare_trace(report, trace, layout, sheet):
    """Every formula cell of the Trace sheet against the engine, vectorised with numpy.

    Per cell, the cancellation floor's base is the largest magnitude that flowed into it: its
    operands' values and, passed on through the dependency graph (within the step, up to 9 links,
    and from the previous Σ row, whose cells carry theirs), their operands'. The graph of a block
    (a step's rows) has the same shape at every full step, so it is built once per shape."""
    columns = layout.columns
    formulas = {
        "sample": [i for i, c in enumerate(columns) if c.sample],
        "total": [i for i, c in enumerate(columns) if c.total],
        "final": [i for i, c in enumerate(columns) if c.final],
    }
    operands = _operands(layout)
    rows = _Rows(layout)
    engine = _engine_matrix(trace, layout, rows)
    with np.errstate(all="ignore"):
        magnitude = np.where(np.isfinite(engine), np.abs(engine), 0.0)
    graphs, cell_rows, cell_columns, flowed_parts, block_of = {}, [], [], [], []
    carried = np.zeros(len(columns))        # flowed magnitudes of the previous Σ row's formula cells
    previous_total = None
    for number, (first, closing) in enumerate(rows.blocks):
        shape = (int(closing - first), KINDS[rows.kind[closing]], previous_total is None)
        graph = graphs.get(shape)
        if graph is None:
            graph = graphs[shape] = _BlockGraph(formulas, operands, *shape)
        at = first + graph.row
        scale = magnitude[at, graph.column]
        flowed = np.zeros(len(graph.cells))
        if graph.fixed_to.size:
            np.maximum.at(flowed, graph.fixed_to, magnitude[first + graph.fixed_row, graph.fixed_column])
        if graph.previous_to.size:
            np.maximum.at(flowed, graph.previous_to, np.maximum(magnitude[previous_total, graph.previous_column],
                                                                carried[graph.previous_column]))
        if graph.inside_to.size:
            np.maximum.at(flowed, graph.inside_to, scale[graph.inside_from])
            for _ in range(8):   # pass magnitudes along the step's chains (x → u → a → … → δ → g → Δθ)
                updated = flowed.copy()
                np.maximum.at(updated, graph.inside_to, flowed[graph.inside_from])
                if np.array_equal(updated, flowed):
                    break
                flowed = updated
        cell_rows.append(at)
        cell_columns.append(graph.column)
        flowed_parts.append(flowed)
        block_of.append(np.full(len(graph.cells), number))
        if rows.kind[closing] == 1:
            carried = np.zeros(len(columns))
            carried[graph.column[graph.closing]] = flowed[graph.closing]
            previous_total = closing
    at, column = np.concatenate(cell_rows), np.concatenate(cell_columns)
    flowed, block = np.concatenate(flowed_parts), np.concatenate(block_of)
    x = engine[at, column]
    # the column floor: the largest finite |x| of the column's formula cells in the block
    column_scale = np.zeros((len(rows.blocks), len(columns)))
    np.maximum.at(column_scale, (block, column), magnitude[at, column])
    floor = np.maximum(FLOOR * np.maximum(column_scale[block, column], flowed), 1e-300)
    number = rows.number[at]
    sheet.cover(int(rows.number.max()), len(columns))
    y, kind = sheet.numbers[number - 1, column], sheet.kinds[number - 1, column]

    def describe(k):
        return f"Trace!{columns[column[k]].letter}{number[k]}", columns[column[k]].header
    for k in _judge(report, "Trace", x, y, kind, floor, describe):
        where, header = describe(k)
        report.mismatches.append(Mismatch(where, header, float(x[k]), sheet.value(int(number[k]), int(column[k]))))


def _compare_table(report, table, sheet):
    """Compare a table sheet (Steps, Diagnosis, ChainRule) with its expected values; rows with the
    same block key (a step; a parameter and step) share the cancellation floor of each column. An
    expected value may be (value, operand magnitude) when the cell's operands are larger than it.
    Text cells must be equal; a block's text mismatches are listed before its numeric ones."""
    headers = [h for h, _, _ in table.headers()]
    numbers, columns, engine, scales, blocks = [], [], [], [], []
    texts, current, block = [], None, -1
    for number, (key, expected) in enumerate(table.expected(), start=table.header_rows + 1):
        if key != current:
            block, current = block + 1, key
        row_scale = 0.0
        if getattr(table, "row_floor", False):
            row_scale = max((abs(float(x)) for x in expected.values()
                             if not isinstance(x, (str, tuple)) and math.isfinite(float(x))), default=0.0)
        for index, x in expected.items():
            scale = row_scale
            if isinstance(x, tuple):   # (value, magnitude of its operands): the cancellation floor of this cell
                x, scale = x
            if isinstance(x, str):
                texts.append((block, number, index, x))
            else:
                numbers.append(number)
                columns.append(index)
                engine.append(float(x))
                scales.append(scale)
                blocks.append(block)
    wrong = []
    for block, number, index, x in texts:
        where = f"{table.title}!{get_column_letter(index + 1)}{number}"
        report.count(table.title)
        y = sheet.value(number, index)
        if (y or "") != x:
            wrong.append((block, 0, Mismatch(where, headers[index], x, y)))
    number, column = np.array(numbers, dtype=np.int64), np.array(columns, dtype=np.int64)
    x, block = np.array(engine, dtype=float), np.array(blocks, dtype=np.int64)
    column_scale = np.zeros((block.max() + 1 if block.size else 0, len(headers)))
    with np.errstate(all="ignore"):
        np.maximum.at(column_scale, (block, column), np.where(np.isfinite(x), np.abs(x), 0.0))
    floor = np.maximum(FLOOR * np.maximum(column_scale[block, column], np.array(scales)), 1e-300)
    sheet.cover(int(number.max()) if number.size else 0, len(headers))
    y, kind = sheet.numbers[number - 1, column], sheet.kinds[number - 1, column]

    def describe(k):
        return f"{table.title}!{get_column_letter(column[k] + 1)}{number[k]}", headers[column[k]]
    for k in _judge(report, table.title, x, y, kind, floor, describe):
        where, header = describe(k)
        wrong.append((int(block[k]), 1, Mismatch(where, header, float(x[k]), sheet.value(int(number[k]), int(column[k])))))
    report.mismatches.extend(m for _, _, m in sorted(wrong, key=lambda w: (w[0], w[1])))


SPREADSHEETS = {"libreoffice": "LibreOffice", "gnumeric": "Gnumeric"}


def verify(trace, workbook_path=None, parameters=(), spreadsheet="libreoffice", layout=None):
    """Export (unless given), recompute with LibreOffice (or Gnumeric), compare; return the Report.
    `layout`: the workbook's layout ("column", "matrix"; None: the one writer.write chooses)."""
    return verify_many([trace], None if workbook_path is None else [workbook_path], parameters, spreadsheet, layout)[0]


def verify_many(traces, workbook_paths=None, parameters=(), spreadsheet="libreoffice", layout=None):
    """Verify many traces with ONE recomputation: export each trace (or take its workbook from
    `workbook_paths`, None entries exported), recompute them all together (one LibreOffice
    process, or Gnumeric two files at a time), compare each workbook with its trace.

    Returns the Reports in the order of `traces`."""
    traces = list(traces)
    given = list(workbook_paths) if workbook_paths is not None else [None] * len(traces)
    if len(given) != len(traces):
        raise ValueError(f"{len(traces)} traces but {len(given)} workbook paths")
    with tempfile.TemporaryDirectory(prefix="tracer-verify-") as folder:
        sources, layouts = [], []
        for index, (trace, path) in enumerate(zip(traces, given)):
            unique = Path(folder) / f"workbook-{index}.xlsx"   # converted names must differ
            if path is None:
                layouts.append(writer.write(trace, unique, parameters=parameters, layout=layout))
                path = unique
            else:
                layouts.append(writer.build_layout(trace, layout))
                if Path(path).stem in {Path(p).stem for p in sources}:
                    shutil.copyfile(path, unique)
                    path = unique
            sources.append(Path(path))
        outdir = Path(folder) / "recomputed"
        if spreadsheet == "gnumeric":
            recomputed = gnumeric.recalc_many(sources, outdir)
        else:
            recomputed = libreoffice.convert_many(sources, "xlsx", outdir)
        return [compare(trace, layout, result, parameters, spreadsheet=SPREADSHEETS[spreadsheet])
                for trace, layout, result in zip(traces, layouts, recomputed)]
