"""Stream a Trace into an .xlsx workbook of live formulas (openpyxl write-only mode).

Sheets: Trace (every scalar, one row per sample and one Σ row per step), Steps (loss,
gradient norms and log10|w| per step, with charts), Settings (hyper-parameters as named
cells), Data (the inputs and targets), Scenario (the TOML of the run).
The file is written to a temporary name beside the target and renamed when complete.
"""
import math
import os
from pathlib import Path
import tempfile

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

from ..errors import LimitError, OutputExistsError
from .. import diagnose as diagnose_module
from . import chainrule, charts, diagnosis, layout as layout_module, steps as steps_module

MAX_ROWS, MAX_FORMULA = 1_048_576, 8_192
_HEADER_FONT = Font(bold=True)
_GROUP_FILL = PatternFill("solid", fgColor="DDEBF7")
_HEADER_FILL = PatternFill("solid", fgColor="F2F2F2")
_HEADER_ALIGN = Alignment(vertical="top")
_ERROR_FILL = PatternFill("solid", fgColor="FF9999")
_ZERO_FILL = PatternFill("solid", fgColor="FFCC66")
_LARGE_FILL = PatternFill("solid", fgColor="FFF2A8")
_TOTAL_FILL = PatternFill("solid", fgColor="D9D9D9")
_SMALLEST_NORMAL = 2.2250738585072014e-308
# Large and tiny magnitudes switch to scientific notation through conditional formatting, so
# 1.23E+57 and 4.5E-18 stay legible without a style on every cell (LibreOffice applies only
# the first matching rule, so each rule carries its own number format).
_SCIENTIFIC = NumberFormat(numFmtId=164, formatCode="0.000E+00")


def constant(value):
    """A number as a cell value: errors for inf/NaN, a formula for subnormals (not storable as text)."""
    value = float(value)
    if not math.isfinite(value):
        return "#NUM!"
    if value != 0 and abs(value) < _SMALLEST_NORMAL:
        return f"={value * 1e300!r}*1E-300"
    return value


def build_layout(trace):
    return layout_module.TraceLayout(trace.scenario, trace.sample_ids, first_step=trace.first_step)


def check_scenario_fits(scenario):
    """Refuse, before training, a run whose workbook would break a spreadsheet limit."""
    from ..engine import batch_schedule
    check_limits(layout_module.TraceLayout(scenario, batch_schedule(scenario)))


def check_limits(layout):
    """Raise LimitError before writing when the run cannot fit a spreadsheet."""
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
                raise LimitError(
                    f"the formula of column {column.header} would be longer than the spreadsheet limit of "
                    f"{MAX_FORMULA} characters: use fewer units per layer",
                    source, layout_module.widest_key(layout.scenario, layer),
                )


def table_layouts(trace, layout, parameters=(), findings=None):
    """The Steps, Diagnosis and ChainRule sheets' layouts (each: title, headers, rows, expected)."""
    steps_layout = steps_module.StepsLayout(trace, layout)
    if findings is None:
        findings = diagnose_module.diagnose(trace).findings
    return [steps_layout, diagnosis.DiagnosisLayout(trace, layout, steps_layout, findings),
            chainrule.ChainRuleLayout(trace, layout, parameters)]


def write(trace, path, force=False, progress=None, parameters=()):
    """Write `trace` as a workbook at `path`; refuse to replace an existing file unless `force`.

    Args:
        trace: the engine's Trace (or a window of it).
        path: target .xlsx path.
        force: replace an existing file.
        progress: optional callable(steps_done) called as steps are written.
        parameters: extra parameter names (W2[1,0], b1[0]) for the ChainRule sheet.
    Returns:
        the TraceLayout used (cell positions of every quantity).
    """
    target = Path(path)
    if target.exists() and not force:
        raise OutputExistsError(f"{target} exists; use --force to replace it")
    layout = build_layout(trace)
    check_limits(layout)
    tables = table_layouts(trace, layout, parameters)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(handle)
    workbook = Workbook(write_only=True)
    try:
        _write_trace(workbook, trace, layout, progress)
        for table in tables:
            sheet = _write_table(workbook, table.title, table.headers(), table.rows())
            if table.title == "Steps":
                charts.add(sheet, trace)
        _write_settings(workbook, trace.scenario)
        _write_data(workbook, trace.scenario)
        _write_text(workbook, "Scenario", trace.scenario.text.splitlines())
        workbook.save(temporary)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, target)
    except BaseException:
        _discard(workbook)
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return layout


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


def _text_cell(sheet, value):
    cell = WriteOnlyCell(sheet, value=value)
    cell.data_type = "s"
    return cell


def _write_trace(workbook, trace, layout, progress):
    sheet = workbook.create_sheet("Trace")
    for column in layout.columns:
        sheet.column_dimensions[column.letter].width = column.width
    sheet.freeze_panes = "C3"
    sheet.print_title_rows = "1:2"
    sheet.print_title_cols = "A:B"
    sheet.page_setup.orientation = "landscape"
    groups, previous = [], None
    for column in layout.columns:
        groups.append(_header_cell(sheet, column.group if column.group != previous else None, _GROUP_FILL))
        previous = column.group
    sheet.append(groups)
    sheet.append([_header_cell(sheet, c.header, _HEADER_FILL, c.comment) for c in layout.columns])
    _add_highlights(sheet, layout)
    width = len(layout.columns)
    sample_templates = [(i, "=" + c.sample) for i, c in enumerate(layout.columns) if c.sample]
    total_templates = [(i, "=" + c.total) for i, c in enumerate(layout.columns) if c.total]
    final_templates = [(i, "=" + c.final) for i, c in enumerate(layout.columns) if c.final]
    sample_width = sample_templates[-1][0] + 1  # sample rows end where their formulas end
    first_parameters = {i: c.key for i, c in enumerate(layout.columns) if c.final}
    first_states = {i: ("=" + c.first, c.key) for i, c in enumerate(layout.columns) if c.first}
    first_step = trace.first_step
    for row in layout.rows():
        places = row.places
        # efficiency is important here: one str.format_map per formula cell
        if row.kind == "sample":
            values = [None] * sample_width
            values[0], values[1] = first_step + row.step, row.sample
            for index, template in sample_templates:
                values[index] = template.format_map(places)
        elif row.kind == "total":
            values = [None] * width
            starting = places["q"] is None
            label = "Σ θ from engine" if starting and first_step else "Σ"
            values[0], values[1] = _total_label(sheet, first_step + row.step), _total_label(sheet, label)
            for index, template in total_templates:
                if starting and index in first_parameters:
                    values[index] = constant(_parameter(trace, first_parameters[index], 0))
                elif starting and index in first_states:
                    values[index] = _first_state(trace, *first_states[index], places)
                else:
                    values[index] = template.format_map(places)
            if progress:
                progress(row.step + 1)
        else:
            values = [None] * width
            values[0], values[1] = first_step + row.step, "final"
            for index, template in final_templates:
                values[index] = template.format_map(places)
        sheet.append(values)


def _first_state(trace, template, key, places):
    """The first Σ row's optimiser state: its formula with the state before it written in (0 at
    step 0, the engine's value at the start of a window; an error cell if that is not finite)."""
    quantity, layer, index = key
    name, kind = quantity.rsplit("_", 1)
    before = float(trace.initial_state[(name, kind)][layer - 1][index])
    if not math.isfinite(before):
        return "#NUM!"
    return template.format_map(dict(places, prev0=repr(before) if before else "0"))


def _total_label(sheet, value):
    cell = WriteOnlyCell(sheet, value=value)
    cell.font, cell.fill = _HEADER_FONT, _TOTAL_FILL
    return cell


def _parameter(trace, key, step):
    kind, layer, index = key
    store = trace.W if kind == "W" else trace.b
    return store[layer - 1][(step,) + tuple(index)]


def _rule(formula, fill=None, stop=False, scientific=False):
    style = DifferentialStyle(fill=fill, numFmt=_SCIENTIFIC if scientific else None)
    return Rule(type="expression", dxf=style, formula=[formula], stopIfTrue=stop)


def _add_number_rules(sheet, whole, cell):
    """|value| > 1e3 yellow and scientific; tiny non-zero values scientific (after any earlier rule)."""
    sheet.conditional_formatting.add(
        whole, _rule(f"AND(ISNUMBER({cell}),ABS({cell})>1000)", fill=_LARGE_FILL, stop=True, scientific=True))
    sheet.conditional_formatting.add(
        whole, _rule(f"AND(ISNUMBER({cell}),{cell}<>0,ABS({cell})<0.001)", stop=True, scientific=True))


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


def _write_table(workbook, title, headers, rows):
    sheet = workbook.create_sheet(title)
    for index, (_, _, width) in enumerate(headers, start=1):
        sheet.column_dimensions[get_column_letter(index)].width = width
    sheet.freeze_panes = "B2"
    sheet.append([_header_cell(sheet, text, _HEADER_FILL, comment) for text, comment, _ in headers])
    count = 0
    for row in rows:
        sheet.append(row)
        count += 1
    whole = f"B2:{get_column_letter(len(headers))}{count + 1}"
    sheet.conditional_formatting.add(whole, _rule("ISERROR(B2)", fill=_ERROR_FILL, stop=True))
    _add_number_rules(sheet, whole, "B2")
    return sheet


def _write_settings(workbook, scenario):
    sheet = workbook.create_sheet("Settings")
    for letter, width in zip("ABC", (18, 14, 50)):
        sheet.column_dimensions[letter].width = width
    sheet.append([_header_cell(sheet, t, _HEADER_FILL) for t in ("name", "value", "meaning")])
    for row, (name, value, meaning) in enumerate(layout_module.settings_values(scenario), start=2):
        sheet.append([name, value, meaning])
        workbook.defined_names[name] = DefinedName(name, attr_text=f"Settings!$B${row}")


def _write_data(workbook, scenario):
    """Inputs and targets as constants; with normalisation, the statistics and the normalised
    inputs as formulas on the raw cells, so the sheet shows how x̂ comes about."""
    sheet = workbook.create_sheet("Data")
    raw = scenario.raw_inputs if scenario.raw_inputs is not None else scenario.inputs
    n, n_in, n_out = raw.shape[0], raw.shape[1], scenario.targets.shape[1]
    headers = ["sample"] + [f"x{i}" for i in range(n_in)] + [f"t{k}" for k in range(n_out)]
    normalize = scenario.normalize
    if normalize != "none":
        headers += [f"x̂{i} ({normalize})" for i in range(n_in)]
    sheet.append([_header_cell(sheet, h, _HEADER_FILL) for h in headers])
    first_row, last_row = 2, n + 1
    stats = (last_row + 2, last_row + 3)
    for index, (x, t) in enumerate(zip(raw, scenario.targets)):
        row = [index] + [constant(v) for v in np.concatenate([x, t])]
        number = index + 2
        for i in range(n_in):
            cell, (one, two) = f"{layout_module.data_letter(i)}{number}", stats
            column = layout_module.data_letter(i)
            if normalize == "standard":
                row.append(f"=({cell}-{column}${one})/{column}${two}")
            elif normalize == "minmax":
                row.append(f"=({cell}-{column}${one})/({column}${two}-{column}${one})")
        sheet.append(row)
    if normalize != "none":
        sheet.append([])
        labels = ("mean μ", "std σ (population)") if normalize == "standard" else ("min", "max")
        for label, which in zip(labels, (0, 1)):
            row = [label]
            for i in range(n_in):
                column = layout_module.data_letter(i)
                span = f"{column}{first_row}:{column}{last_row}"
                if normalize == "standard" and which == 0:
                    row.append(f"=SUM({span})/{n}")
                elif normalize == "standard":
                    row.append(f"=SQRT(SUMPRODUCT(({span}-{column}${stats[0]})^2)/{n})")
                else:
                    row.append(f"={'MIN' if which == 0 else 'MAX'}({span})")
            sheet.append(row)


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
    """One line per row; a line too long for a cell continues in the next columns of its row."""
    sheet = workbook.create_sheet(title)
    sheet.column_dimensions["A"].width = 100
    for line in lines:
        sheet.append([_text_cell(sheet, piece) for piece in _cell_pieces(line)])
