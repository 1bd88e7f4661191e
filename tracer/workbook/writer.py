"""Stream a Trace into an .xlsx workbook of live formulas, each with the engine's value cached.

Sheets: Trace (every scalar, one row per sample and one Σ row per step), Steps (loss,
gradient norms and log10|w| per step, with charts), Settings (hyper-parameters as named
cells), Data (the inputs and targets), Scenario (the TOML of the run).
openpyxl (write-only mode) writes each sheet's frame: widths, header rows with comments,
conditional formats, charts, defined names; the rows are streamed as XML by xlsx.py.
The file is written to a temporary name beside the target and renamed when complete.
"""
import copy
import io
import math
import sys
from pathlib import Path

import numpy as np
from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.comments import Comment
from openpyxl.formatting.rule import Rule
from openpyxl.styles import Alignment, Font, PatternFill
from openpyxl.styles.differential import DifferentialStyle
from openpyxl.styles.numbers import NumberFormat
from openpyxl.utils import get_column_letter
from openpyxl.workbook.defined_name import DefinedName
from openpyxl.xml.functions import tostring

from tracer.errors import LimitError, OutputExistsError
from tracer.explain import diagnose as diagnose_module
from tracer import layers, output
from tracer.maths import procedures
from tracer.workbook import (chainrule, charts, diagnosis, histograms, layout as layout_module, matrix, steps as steps_module, xlsx)

MAX_ROWS, MAX_FORMULA = 1_048_576, 8_192
_HEADER_FONT = Font(bold=True)
_GROUP_FILL = PatternFill("solid", fgColor="DDEBF7")
_HEADER_FILL = PatternFill("solid", fgColor="F2F2F2")
_HEADER_ALIGN = Alignment(vertical="top")
_TOTAL_FILL = PatternFill("solid", fgColor="D9D9D9")
# Differential (conditional-format) fills: Excel paints them from bgColor, LibreOffice from fgColor.
_ERROR_FILL = PatternFill("solid", fgColor="FF9999", bgColor="FF9999")
_ZERO_FILL = PatternFill("solid", fgColor="FFCC66", bgColor="FFCC66")
_LARGE_FILL = PatternFill("solid", fgColor="FFF2A8", bgColor="FFF2A8")
_SMALLEST_NORMAL = 2.2250738585072014e-308
# Number formats come from conditional formatting, so they follow the value after a recalculation
# and no cell needs a style: |x| ≥ 1e3 and tiny non-zero |x| < 1e-3 scientific (1.234E+57,
# 4.500E-18), other non-integers fixed with six decimals (758.093564, 0.001234: at least four
# significant digits like the scientific ones), integers General (0, 1, 3). LibreOffice applies
# only the first matching rule, so each rule carries its own number format.
_SCIENTIFIC = NumberFormat(numFmtId=164, formatCode="0.000E+00")
_FIXED = NumberFormat(numFmtId=165, formatCode="0.000000")


def constant(value):
    """A number as a cell value: errors for inf/NaN, a formula for subnormals (not storable as text)
    and for magnitudes above 1e308 (LibreOffice reads 1.7976931348623157E+308 as infinite; half of
    it, doubled, is exact)."""
    value = float(value)
    if not math.isfinite(value):
        return "#NUM!"
    if value != 0 and abs(value) < _SMALLEST_NORMAL:
        return f"={value * 1e300!r}*1E-300"
    if abs(value) > 1e308:
        return f"={value / 2!r}*2"
    return value


def constant_cell(ref, value):
    """A constant cell of `value`; a number a spreadsheet cannot hold as text (subnormal, above
    1e308) becomes its exact formula, with the number itself as the cached result."""
    if not isinstance(value, (float, np.floating)):
        return xlsx.value_cell(ref, value)
    written = constant(value)
    if isinstance(written, str) and written.startswith("="):
        return xlsx.formula_cell(ref, written[1:], float(value))
    return xlsx.value_cell(ref, written)


LAYOUTS = ("column", "matrix")


def build_layout(trace, layout=None):
    """The Trace sheet's layout of `trace` (see make_layout). None: the layout of the trace's sum
    order where it can show the run (a trace run in the matmul order gets the matrix layout, whose
    sums are not in order either), else make_layout's choice."""
    if layout is None and trace.sum_order == SUM_ORDER_OF_LAYOUT["matrix"] and not matrix.unsupported(trace.scenario):
        try:
            return make_layout(trace.scenario, trace.sample_ids, trace.first_step, "matrix")
        except LimitError:
            pass
    return make_layout(trace.scenario, trace.sample_ids, trace.first_step, layout)


def make_layout(scenario, sample_ids, first_step=0, layout=None):
    """The layout of the Trace sheet: `layout` "column" (a column per quantity, a row per sample,
    layout.py) or "matrix" (parameters as blocks, matrix.py); None: the column layout when the run
    fits it, else the matrix layout. Raises LimitError when the layout asked for (or, for None,
    neither) fits a spreadsheet, before anything is written."""
    if layout == "matrix":
        return matrix.MatrixLayout(scenario, sample_ids, first_step)
    try:
        column = layout_module.TraceLayout(scenario, sample_ids, first_step=first_step)
        check_limits(column)
        return column
    except LimitError:
        if layout == "column" or matrix.unsupported(scenario):
            raise
        refused = sys.exc_info()[1]
    try:
        return matrix.MatrixLayout(scenario, sample_ids, first_step)
    except LimitError:
        raise refused from None


def check_scenario_fits(scenario, layout="column", window=None):
    """Refuse, before training, a run whose workbook would break a spreadsheet limit in `layout`
    ("column", "matrix", or None: whichever make_layout chooses); returns the layout's name.
    `window` (A, B): the workbook shows only steps A..B (--window)."""
    from tracer.training.engine import batch_schedule
    schedule = batch_schedule(scenario)
    if window is not None:
        return make_layout(scenario, schedule[window[0]:window[1] + 1], window[0], layout).name
    return make_layout(scenario, schedule, layout=layout).name


# The engine's sum order for the workbook of each layout: the column layout writes every sum as a
# formula =t₀+t₁+… that the spreadsheet adds left to right, as the engine's in_order does (so both
# take the same branch at u exactly 0); the matrix layout's MMULT and SUMPRODUCT add in the
# spreadsheet's own order (LibreOffice: compensated Kahan–Neumaier summation), which no engine order
# reproduces, so the engine takes numpy's matrix products there (verify's tolerance covers both).
SUM_ORDER_OF_LAYOUT = {"column": "in_order", "matrix": "matmul"}


def sum_order(scenario, layout=None, window=None):
    """The sum order engine.run should use for `scenario` ("in_order" or "matmul"): that of the
    layout its workbook has (SUM_ORDER_OF_LAYOUT), `layout` ("column", "matrix", or None: whichever
    make_layout chooses), judged on the first step the workbook shows (of `window` (A, B), or step
    0): the net's width decides, and a run too long for a workbook (traced to CSV only) takes the
    order of its --window exports. "in_order" when no layout can show even that step. Cheap: the
    layouts count their columns and check their limits from the scenario alone, before the engine
    runs (a whole run that fits a layout has the layout of its first step: the matrix layout takes
    more rows per step than the column layout)."""
    from tracer.training.engine import batch_schedule
    first = 0 if window is None else window[0]
    head = copy.copy(scenario)
    head.steps = first + 1
    try:
        return SUM_ORDER_OF_LAYOUT[make_layout(scenario, batch_schedule(head)[first:], first, layout).name]
    except LimitError:
        return "in_order"


def check_limits(layout):
    """Raise LimitError before writing when the run cannot fit a spreadsheet."""
    if isinstance(layout, matrix.MatrixLayout):
        return   # the matrix layout checks its limits as it is made
    source = layout.scenario.source
    if layout.last_row > MAX_ROWS:
        rows_per_step = layout.last_row / max(1, len(layout.sample_ids))
        fitting = int((MAX_ROWS - 3) // rows_per_step)
        problem = f"the Trace sheet would need {layout.last_row:,} rows, above the spreadsheet limit of {MAX_ROWS:,}"
        if fitting < 1:
            raise LimitError(f"{problem}: one step takes {rows_per_step:,.0f} rows (a row per sample); "
                             "use a smaller batch", source, "training.batch")
        raise LimitError(f"{problem}: use --steps {fitting} or fewer (steps = {fitting}), "
                         "or export a slice with --window A:B", source, "steps")
    big = {key: 1_048_576 for key in "rpqdfln"}
    for column in layout.columns:
        for template in (column.sample, column.total, column.final):
            if template and len(template.format(**big)) + 1 > MAX_FORMULA:
                layer = column.key[1] if len(column.key) > 1 and isinstance(column.key[1], int) else None
                steps = layout_module.time_steps(layout.scenario)
                timed = layout.timed_from()
                through_time = (layer and layers.of(layout.scenario.layers[layer - 1]).excel_unrolled(layout.scenario.layers[layer - 1])
                                or timed and (layer is None or layer >= timed))   # a sum over the time steps
                if steps and through_time:
                    raise LimitError(
                        f"the formula of column {column.header} would be longer than the spreadsheet limit of "
                        f"{MAX_FORMULA} characters: it sums {steps} time steps; use shorter sequences "
                        "(or fewer units)", source, "data.inputs")
                raise LimitError(
                    f"the formula of column {column.header} would be longer than the spreadsheet limit of "
                    f"{MAX_FORMULA} characters: use fewer units per layer",
                    source, layout_module.widest_key(layout.scenario, layer),
                )


def table_layouts(trace, layout, parameters=(), findings=None):
    """The Steps, Diagnosis, ChainRule and Histograms sheets' layouts (each: title, headers, rows, expected);
    in the matrix layout all but ChainRule (it factors per-sample gradient cells, which that layout has not)."""
    if findings is None:
        findings = diagnose_module.diagnose(trace).findings
    if isinstance(layout, matrix.MatrixLayout):
        steps_layout = matrix.StepsLayout(trace, layout)
        return [steps_layout, diagnosis.DiagnosisLayout(trace, layout, steps_layout, findings),
                histograms.HistogramLayout(trace, layout, steps_layout)]
    steps_layout = steps_module.StepsLayout(trace, layout)
    return [steps_layout, diagnosis.DiagnosisLayout(trace, layout, steps_layout, findings),
            chainrule.ChainRuleLayout(trace, layout, parameters), histograms.HistogramLayout(trace, layout, steps_layout)]


def write(trace, path, force=False, progress=None, parameters=(), into=None, layout=None):
    """Write `trace` as a workbook at `path`; refuse to replace an existing file unless `force`.

    Args:
        trace: the engine's Trace (or a window of it).
        path: target .xlsx path.
        force: replace an existing file.
        progress: optional callable(steps_done) called as steps are written.
        parameters: extra parameter names (W2[1,0], b1[0]) for the ChainRule sheet.
        into: a temporary beside `path` that the caller renames (output.atomic_paths, to commit
            several outputs together): the workbook is written there and not renamed.
        layout: "column", "matrix" or None (the column layout when the run fits it, else matrix).
    Returns:
        the layout used (TraceLayout or MatrixLayout: cell positions of every quantity).
    """
    target = Path(path)
    if target.exists() and not force:
        raise OutputExistsError(f"{target} exists; use --force to replace it")
    layout = build_layout(trace, layout)
    check_limits(layout)
    tables = table_layouts(trace, layout, parameters)
    temporary = output.temporary_beside(target) if into is None else into
    workbook = Workbook(write_only=True)
    try:
        if isinstance(layout, matrix.MatrixLayout):
            bodies = [matrix.write_sheet(workbook, trace, layout, progress)]
        else:
            bodies = [_write_trace(workbook, trace, layout, progress)]
        for table in tables:
            sheet, body = _write_table(workbook, table)
            bodies.append(body)
            if table.title == "Steps":
                charts.add(sheet, trace)
            elif table.title == histograms.HistogramLayout.title:
                histograms.add_charts(sheet, table)
        bodies.append(_write_settings(workbook, trace.scenario))
        bodies.append(_write_data(workbook, trace.scenario))
        bodies.append(_write_text(workbook, "Scenario", trace.scenario.text.splitlines()))
        _save(workbook, temporary, bodies)
        if into is None:
            output.commit(temporary, target)
    except BaseException as exc:
        _discard(workbook)
        if into is None:
            output.abandon(temporary)
        if isinstance(exc, OSError):
            raise output.cannot_write(target, exc) from None
        raise
    return layout


def _save(workbook, path, bodies):
    """openpyxl writes the package with each sheet's header rows (in memory); the rows of every
    sheet are then streamed into it on the way to `path` (see xlsx.py), with fixed dates."""
    moment = xlsx.package_time()
    skeleton = io.BytesIO()
    workbook.save(skeleton)
    properties = workbook.properties
    properties.creator, properties.created, properties.modified = "tracer", moment, moment
    core = b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n' + tostring(properties.to_tree())
    parts = {sheet.path[1:]: body for sheet, body in zip(workbook.worksheets, bodies)}
    xlsx.write_package(skeleton, path, parts, moment, replace={"docProps/core.xml": core})


def _discard(workbook):
    """Close the streams of an abandoned write-only workbook (they would complain when collected)."""
    for sheet in workbook.worksheets:
        try:
            sheet.close()
        except Exception:  # noqa: BLE001 - the original error is the one to report
            pass


def _header_cell(sheet, value, fill, comment=None):
    cell = WriteOnlyCell(sheet, value=value)
    cell.font, cell.fill, cell.alignment = _HEADER_FONT, fill, _HEADER_ALIGN
    if comment:
        cell.comment = Comment(comment, "tracer", width=300, height=80)
    return cell


COMMENTED_COLUMNS = 500   # LibreOffice draws every comment as a shape: the 7,475 of a 64-32-10 net took 12 s to open


def _column_comments(columns):
    """The header comment of each column. Up to COMMENTED_COLUMNS columns every column has its own;
    a wider sheet comments the first column of each run of one quantity of one layer (the headers
    name the others), so that it opens in seconds."""
    if len(columns) <= COMMENTED_COLUMNS:
        return [c.comment for c in columns]
    comments, previous = [], None
    for c in columns:
        quantity = (c.group, c.key[:2])
        comments.append(c.comment if quantity != previous else None)
        previous = quantity
    return comments


def _fit(width, *texts):
    """A column width that shows `texts` whole (about one unit per character, plus a margin)."""
    return max([width] + [len(str(t)) + 2 for t in texts if t is not None])


class _Rows:
    """Several layout rows of one kind at once: step, slot and sample are index arrays, so that
    Trace.values (one lookup of the engine's value per quantity) returns them all."""

    def __init__(self, kind, rows):
        self.kind = kind
        self.step = np.array([row.step for row in rows], dtype=np.intp)
        self.slot = np.array([row.slot or 0 for row in rows], dtype=np.intp)
        self.sample = np.array([row.sample or 0 for row in rows], dtype=np.intp)


def _engine_values(trace, columns, kind, rows):
    """(rows × columns) engine values of the formula cells of `rows` (all of one kind)."""
    if not rows or not columns:
        return np.empty((len(rows), len(columns)))
    block = _Rows(kind, rows)
    with np.errstate(all="ignore"):
        return np.column_stack([np.broadcast_to(np.asarray(trace.values(c.key, kind, block.step, block.slot, block.sample), dtype=float), (len(rows),))
                                for c in columns])


def _write_trace(workbook, trace, layout, progress):
    """The Trace sheet's frame and header rows; returns the generator of its data rows."""
    sheet = workbook.create_sheet("Trace")
    for column in layout.columns:
        sheet.column_dimensions[column.letter].width = _fit(column.width, column.header)
    sheet.column_dimensions["B"].width = _fit(layout.columns[1].width, "final", "Σ θ from engine")
    sheet.freeze_panes = "C3"
    sheet.print_title_rows = "1:2"
    sheet.print_title_cols = "A:B"
    sheet.page_setup.orientation = "landscape"
    groups, previous = [], None
    for column in layout.columns:
        groups.append(_header_cell(sheet, column.group if column.group != previous else None, _GROUP_FILL))
        previous = column.group
    sheet.append(groups)
    sheet.append([_header_cell(sheet, c.header, _HEADER_FILL, comment)
                  for c, comment in zip(layout.columns, _column_comments(layout.columns))])
    _add_highlights(sheet, layout)
    label = WriteOnlyCell(sheet)
    label.font, label.fill = _HEADER_FONT, _TOTAL_FILL
    return _trace_rows(trace, layout, xlsx.style(label.style_id), progress)


_CHUNK_ROWS = 2048   # rows whose engine values are looked up together (whole steps)


def _trace_rows(trace, layout, label, progress):
    """Every data row of the Trace sheet as XML, a chunk of steps at a time: formulas with the
    engine's values cached; a row whose values are all finite is one format call."""
    first_step = trace.first_step
    kinds = {kind: [c for c in layout.columns if getattr(c, kind)] for kind in ("sample", "total", "final")}
    templates = {
        "sample": xlsx.row_template([("A", None, ""), ("B", None, "")] + [(c.letter, c.sample, "") for c in kinds["sample"]]),
        "total": xlsx.row_template([("A", None, label), xlsx.value_cell("B{r}", "Σ", label)]
                                   + [(c.letter, c.total, "") for c in kinds["total"]]),
    }
    chunk, step = [], None
    for row in layout.rows():
        if row.kind == "final":
            yield from _trace_chunk(trace, kinds, templates, chunk, label, progress)
            values = _engine_values(trace, kinds["final"], "final", [row])[0]
            cells = [xlsx.value_cell(f"A{row.number}", first_step + row.step), xlsx.value_cell(f"B{row.number}", "final")]
            cells += [xlsx.formula_cell(f"{c.letter}{row.number}", c.final.format_map(row.places), x)
                      for c, x in zip(kinds["final"], values.tolist())]
            yield xlsx.row(row.number, cells)
            return
        if row.step != step and len(chunk) >= _CHUNK_ROWS:
            yield from _trace_chunk(trace, kinds, templates, chunk, label, progress)
            chunk = []
        chunk.append(row)
        step = row.step


def _trace_chunk(trace, kinds, templates, rows, label, progress):
    """The XML of a run of whole steps' rows."""
    first_step = trace.first_step
    values, finite, texts = {}, {}, {}
    for kind in ("sample", "total"):
        block = _engine_values(trace, kinds[kind], kind, [row for row in rows if row.kind == kind])
        values[kind], finite[kind] = iter(block.tolist()), iter(np.isfinite(block).all(axis=1).tolist())
        texts[kind] = iter(xlsx.numbers(block).tolist())
    sample_template, total_template = templates["sample"], templates["total"]
    for row in rows:
        kind = row.kind
        cached, all_finite, text = next(values[kind]), next(finite[kind]), next(texts[kind])
        if kind == "sample":
            if all_finite:
                yield sample_template.format(first_step + row.step, row.sample, *text, **row.places)
            else:
                yield _slow_row(trace, kinds[kind], row, cached, label, False)
            continue
        starting = row.places["q"] is None
        if all_finite and not starting:
            yield total_template.format(first_step + row.step, *text, **row.places)
        else:
            yield _slow_row(trace, kinds[kind], row, cached, label, starting)
        if progress:
            progress(row.step + 1)


def _slow_row(trace, columns, row, cached, label, starting):
    """A row cell by cell: with non-finite values, or the first Σ row (its parameters are the
    engine's constants, its optimiser states start from the state before the run)."""
    first_step, r = trace.first_step, row.number
    if row.kind == "sample":
        cells = [xlsx.value_cell(f"A{r}", first_step + row.step), xlsx.value_cell(f"B{r}", row.sample)]
    else:
        text = "Σ θ from engine" if starting and first_step else "Σ"
        cells = [xlsx.value_cell(f"A{r}", first_step + row.step, label), xlsx.value_cell(f"B{r}", text, label)]
    for column, x in zip(columns, cached):
        ref = f"{column.letter}{r}"
        if starting and column.final:
            cells.append(constant_cell(ref, float(_parameter(trace, column.key, 0))))
        elif starting and column.first:
            formula = _first_state(trace, "=" + column.first, column.key, row.places)
            cells.append(xlsx.value_cell(ref, formula) if formula == "#NUM!" else xlsx.formula_cell(ref, formula[1:], x))
        else:
            template = column.sample if row.kind == "sample" else column.total
            cells.append(xlsx.formula_cell(ref, template.format_map(row.places), x))
    return xlsx.row(r, cells)


def _first_state(trace, template, key, places):
    """The first Σ row's optimiser state: its formula with the state before it written in (0 at
    step 0, the engine's value at the start of a window; an error cell if that is not finite)."""
    before = float(trace.values(key, "initial", 0, 0, 0))
    if not math.isfinite(before):
        return "#NUM!"
    return template.format_map(dict(places, prev0=repr(before) if before else "0"))


def _parameter(trace, key, step):
    return trace.values(key, "total", step, 0, 0)


def _rule(formula, fill=None, stop=False, number_format=None):
    style = DifferentialStyle(fill=fill, numFmt=number_format)
    return Rule(type="expression", dxf=style, formula=[formula], stopIfTrue=stop)


def _add_number_rules(sheet, whole, cell):
    """|value| ≥ 1e3 yellow and scientific; tiny non-zero values scientific; other non-integers
    fixed (after any earlier rule)."""
    sheet.conditional_formatting.add(
        whole, _rule(f"AND(ISNUMBER({cell}),ABS({cell})>=1000)", fill=_LARGE_FILL, stop=True, number_format=_SCIENTIFIC))
    sheet.conditional_formatting.add(
        whole, _rule(f"AND(ISNUMBER({cell}),{cell}<>0,ABS({cell})<0.001)", stop=True, number_format=_SCIENTIFIC))
    sheet.conditional_formatting.add(
        whole, _rule(f"AND(ISNUMBER({cell}),{cell}<>INT({cell}))", stop=True, number_format=_FIXED))


def _add_highlights(sheet, layout):
    """Mark error cells red, exact-zero slopes orange, |value| > 1e3 yellow (scientific)."""
    last = layout.last_row
    first_letter, last_letter = layout.columns[2].letter, layout.columns[-1].letter
    whole = f"{first_letter}3:{last_letter}{last}"
    cell = f"{first_letter}3"
    sheet.conditional_formatting.add(whole, _rule(f"ISERROR({cell})", fill=_ERROR_FILL, stop=True))
    for column in layout.columns:
        if column.key[0] == "slope":
            top = f"{column.letter}3"
            sheet.conditional_formatting.add(
                f"{column.letter}3:{column.letter}{last}",
                _rule(f"AND(ISNUMBER({top}),{top}=0)", fill=_ZERO_FILL, stop=True),
            )
    _add_number_rules(sheet, whole, cell)


def _write_table(workbook, table):
    """A table sheet's frame and header row; returns the sheet and the generator of its rows."""
    sheet = workbook.create_sheet(table.title)
    headers = table.headers()
    for index, (text, _, width) in enumerate(headers, start=1):
        sheet.column_dimensions[get_column_letter(index)].width = _fit(width, text)
    sheet.freeze_panes = "B2"
    if table.title == "Steps":
        charts.prepare(sheet)
    sheet.append([_header_cell(sheet, text, _HEADER_FILL, comment) for text, comment, _ in headers])
    # the rules cover every row a sheet can have: the rows are streamed after this frame is written
    whole = f"B2:{get_column_letter(len(headers))}{MAX_ROWS}"
    sheet.conditional_formatting.add(whole, _rule("ISERROR(B2)", fill=_ERROR_FILL, stop=True))
    _add_number_rules(sheet, whole, "B2")
    return sheet, _table_rows(table, [get_column_letter(i + 1) for i in range(len(headers))])


def _table_rows(table, letters):
    """A table's rows as XML: its formulas carry the values of table.expected() (an error value,
    the table's `error_value` or #NUM!, where the engine is not finite)."""
    error = getattr(table, "error_value", "#NUM!")
    formula_cell, value_cell = xlsx.formula_cell, xlsx.value_cell
    for number, (values, (_, expected)) in enumerate(zip(table.rows(), table.expected()), start=table.header_rows + 1):
        cells = []
        for index, value in enumerate(values):
            ref = f"{letters[index]}{number}"
            if isinstance(value, str) and value.startswith("="):
                cached = expected.get(index, xlsx.NO_VALUE)
                if isinstance(cached, tuple):   # (value, magnitude of its operands) for verify
                    cached = cached[0]
                cells.append(formula_cell(ref, value[1:], cached, error=error))
            else:
                cells.append(value_cell(ref, value))
        yield xlsx.row(number, cells)


def _write_settings(workbook, scenario):
    """The Settings sheet: hyper-parameters as named cells (defined names Settings!$B$n)."""
    sheet = workbook.create_sheet("Settings")
    entries = list(layout_module.settings_values(scenario))
    widths = (_fit(18, *(e[0] for e in entries)), 14, _fit(50, *(e[2] for e in entries)))
    for letter, width in zip("ABC", widths):
        sheet.column_dimensions[letter].width = width
    sheet.append([_header_cell(sheet, t, _HEADER_FILL) for t in ("name", "value", "meaning")])
    for row, (name, _, _) in enumerate(entries, start=2):
        workbook.defined_names[name] = DefinedName(name, attr_text=f"Settings!$B${row}")
    return (xlsx.row(number, [constant_cell(f"{letter}{number}", value) for letter, value in zip("ABC", entry)])
            for number, entry in enumerate(entries, start=2))


def _write_data(workbook, scenario):
    """Inputs and targets as constants; with normalisation, the statistics and the normalised
    inputs as formulas on the raw cells, so the sheet shows how x̂ comes about."""
    sheet = workbook.create_sheet("Data")
    raw = scenario.raw_inputs if scenario.raw_inputs is not None else scenario.inputs
    n_in, n_out = raw.shape[1], scenario.targets.shape[1]
    headers = ["sample"] + [f"x{i}" for i in range(n_in)] + [f"t{k}" for k in range(n_out)]
    if raw.ndim == 3:   # sequences: one column per (time step, feature), time outer
        headers[1:1 + n_in] = [layout_module.timed(f"x{i}", t) for t in range(raw.shape[1]) for i in range(raw.shape[2])]
        raw = raw.reshape(len(raw), -1)
        n_in = raw.shape[1]
    if scenario.targets.ndim == 3:   # targets per time step, likewise
        targets = scenario.targets
        headers[1 + n_in:] = [layout_module.timed(f"t{k}", t) for t in range(targets.shape[1]) for k in range(targets.shape[2])]
    if scenario.normalize != "none":
        headers += [f"x̂{i} ({scenario.normalize})" for i in range(n_in)]
    for index, header in enumerate(headers, start=1):
        sheet.column_dimensions[get_column_letter(index)].width = _fit(10, header)
    sheet.append([_header_cell(sheet, h, _HEADER_FILL) for h in headers])
    return _data_rows(scenario, raw)


def _data_rows(scenario, raw):
    normalize = scenario.normalize
    n, n_in = raw.shape[0], raw.shape[1]
    first_row, last_row = 2, n + 1
    stats = (last_row + 2, last_row + 3)
    letter = layout_module.data_letter
    for index, (x, t) in enumerate(zip(raw, scenario.targets.reshape(len(raw), -1))):
        number = index + 2
        constants = [index] + [float(v) for v in np.concatenate([x, t])]
        cells = [constant_cell(f"{get_column_letter(position + 1)}{number}", value)
                 for position, value in enumerate(constants)]
        for i in range(n_in):
            cell, column, (one, two) = f"{letter(i)}{number}", letter(i), stats
            if normalize == "none":
                continue
            formula = procedures.excel_normalized(normalize, cell, f"{column}${one}", f"{column}${two}")
            ref = f"{letter(len(constants) - 1 + i)}{number}"
            cells.append(xlsx.formula_cell(ref, formula, float(scenario.inputs.reshape(len(raw), -1)[index, i])))
        yield xlsx.row(number, cells)
    if normalize == "none":
        return
    labels = procedures.STATISTICS[normalize]
    with np.errstate(all="ignore"):
        values = procedures.normalization_stats(raw, normalize)
    for which, (label, number) in enumerate(zip(labels, stats)):
        cells = [xlsx.value_cell(f"A{number}", label)]
        for i in range(n_in):
            column = letter(i)
            span = f"{column}{first_row}:{column}{last_row}"
            formula = procedures.excel_normalization_stats(normalize, span, n, f"{column}${stats[0]}")[which]
            cells.append(xlsx.formula_cell(f"{column}{number}", formula, float(values[which][i])))
        yield xlsx.row(number, cells)


MAX_CELL_TEXT = 32_767   # UTF-16 code units a cell holds; LibreOffice and Excel cut longer text


def _cell_pieces(line):
    """`line` cut into pieces a cell holds whole (a character beyond U+FFFF counts twice)."""
    if 2 * len(line) <= MAX_CELL_TEXT:
        return [line]
    pieces, start, units = [], 0, 0
    for index, char in enumerate(line):
        width = 2 if ord(char) > 0xFFFF else 1
        if units + width > MAX_CELL_TEXT:
            pieces.append(line[start:index])
            start, units = index, 0
        units += width
    return pieces + [line[start:]]


def _write_text(workbook, title, lines):
    """One line per row in column A (the scenario's TOML); a line too long for a cell continues in
    the next columns of its row."""
    sheet = workbook.create_sheet(title)
    sheet.column_dimensions["A"].width = 100
    return (xlsx.row(number, [xlsx.value_cell(f"{get_column_letter(index)}{number}", piece)
                              for index, piece in enumerate(_cell_pieces(line), start=1)])
            for number, line in enumerate(lines, start=1))
