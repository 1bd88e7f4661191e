"""Workbooks: live formulas recomputed by LibreOffice (never mocked) equal the engine, cell for cell."""
import dataclasses
import copy
import math
import numbers
import re
import xml.etree.ElementTree as ET
import zipfile

import numpy as np
import openpyxl
import pytest

from tracer.training import engine, scenario as scenario_module, templates
from tracer.recalc import libreoffice, verify
from tracer.errors import LimitError, TracerError
from tracer.workbook import charts, writer
from tests.conftest import BASE, build


def template(name):
    return engine.run(scenario_module.load(name))


@pytest.mark.libreoffice(workbooks=template)
@pytest.mark.parametrize("name", templates.names())
def test_every_template_verifies(recomputed, name):
    report = recomputed.report
    assert report.ok, report.summary()
    assert report.cells > 100


@pytest.mark.libreoffice(workbooks=lambda: template("leaky-relu-explosion"))
def test_overflow_cells_are_errors_in_the_same_places(recomputed):
    trace, report = recomputed.trace, recomputed.report
    assert report.ok, report.summary()
    nonfinite = sum(int((~np.isfinite(g)).sum()) for g in trace.grad_W)
    assert nonfinite > 0 and report.errors_matched >= nonfinite


def _learning_rate_edited(folder):
    """xor's workbook with 0.37 typed into the learning-rate cell of the Settings sheet."""
    path = folder / "xor.xlsx"
    writer.write(engine.run(scenario_module.load("xor", steps=8)), path)
    book = openpyxl.load_workbook(path)
    assert book["Settings"]["A2"].value == "learning_rate"
    book["Settings"]["B2"].value = 0.37
    edited = folder / "edited.xlsx"
    book.save(edited)
    return edited


@pytest.mark.libreoffice(workbooks=_learning_rate_edited)
def test_changing_the_learning_rate_cell_recomputes_the_run(recomputed):
    original = engine.run(scenario_module.load("xor", steps=8))
    layout = writer.build_layout(original)
    changed = engine.run(scenario_module.load("xor", steps=8, overrides=["optimizer.lr=0.37"]))
    report = verify.compare(changed, layout, recomputed)
    assert report.ok, report.summary()
    assert not verify.compare(original, layout, recomputed).ok  # the numbers really moved


ACTIVATIONS_AND_LOSSES = [("sigmoid", "softmax", "softmax_ce"), ("relu", "sigmoid", "bce"),
                          ("leaky_relu", "identity", "mse"), ("elu", "tanh", "sse"),
                          ("silu", "gelu", "half_sse"), ("softplus", "identity", "half_sse")]


def _activation_and_loss_runs():
    traces = []
    for hidden, output, loss in ACTIVATIONS_AND_LOSSES:
        raw = copy.deepcopy(BASE)
        raw["layers"][0]["activation"] = hidden
        raw["layers"][1]["activation"] = output
        raw["loss"] = {"name": loss, "reduction": "mean"}
        if output == "softmax":
            raw["layers"][1]["units"] = 2
            raw["data"]["targets"] = [[1, 0], [0, 1], [1, 0]]
        if loss == "bce":
            raw["data"]["targets"] = [[1], [0], [1]]
        raw["training"]["batch"] = 2
        traces.append(build(raw))
    return traces


@pytest.mark.libreoffice(workbooks=_activation_and_loss_runs)
def test_every_activation_and_loss_verifies(recomputed):
    assert len(recomputed) == len(ACTIVATIONS_AND_LOSSES)
    for (hidden, output, loss), verified in zip(ACTIVATIONS_AND_LOSSES, recomputed):
        assert verified.report.ok, (hidden, output, loss, verified.report.summary())


@pytest.mark.libreoffice
def test_pdf_conversion(soffice, tmp_path):
    path = tmp_path / "run.xlsx"
    writer.write(engine.run(scenario_module.load("leaky-relu-explosion")), path)
    # many files in one LibreOffice process (one start): a file it cannot read is named, the others converted
    broken = tmp_path / "broken.xlsx"
    broken.write_bytes(b"PK not a workbook")
    with pytest.raises(TracerError, match="could not convert broken.xlsx") as raised:
        libreoffice.convert_many([broken, path], "pdf", tmp_path / "many")
    pdf = tmp_path / "many" / "run.pdf"
    assert "run.xlsx" not in str(raised.value) and pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 10_000
    with pytest.raises(ValueError, match="different names"):
        libreoffice.convert_many([path, tmp_path / "pdf" / "run.xlsx"], "pdf", tmp_path / "many")


def _header_comments(path):
    """{column letter: comment text} of the Trace sheet's header row (row 2)."""
    sheet = openpyxl.load_workbook(path)["Trace"]
    return {cell.column_letter: cell.comment.text for cell in sheet[2] if cell.comment is not None}


def test_a_narrow_sheet_comments_every_column_and_a_wide_one_each_quantity_once(tmp_path):
    """Every header cell has its comment up to COMMENTED_COLUMNS columns; beyond, the first column
    of each quantity of each layer (LibreOffice draws each comment as a shape: thousands of them
    took seconds to open)."""
    narrow = writer.write(engine.run(scenario_module.load("xor", steps=2)), tmp_path / "narrow.xlsx")
    comments = _header_comments(tmp_path / "narrow.xlsx")
    assert len(narrow.columns) <= writer.COMMENTED_COLUMNS and set(comments) == {c.letter for c in narrow.columns}
    wide = writer.write(engine.run(scenario_module.load(
        "xor", overrides=["data.inputs=[[" + ",".join(["0.5"] * 300) + "]]", "data.targets=[[1]]"], steps=1)),
        tmp_path / "wide.xlsx", layout="column")
    comments = _header_comments(tmp_path / "wide.xlsx")
    assert len(wide.columns) > writer.COMMENTED_COLUMNS
    firsts = {}
    for column in wide.columns:
        firsts.setdefault((column.group, column.key[:2]), column)
    assert set(comments) == {c.letter for c in firsts.values()}
    assert all(comments[c.letter] == c.comment for c in firsts.values())
    assert comments[wide.cell(("x", 0, 0))].startswith("input x0")


def test_sheet_structure(tmp_path):
    path = tmp_path / "run.xlsx"
    layout = writer.write(engine.run(scenario_module.load("sigmoid-vanishing")), path)
    book = openpyxl.load_workbook(path)
    assert book.sheetnames == ["Trace", "Steps", "Diagnosis", "ChainRule", "Histograms", "Settings", "Data", "Scenario"]
    sheet = book["Trace"]
    assert sheet.freeze_panes == "C3"
    u = layout.cell(("u", 1, 0))
    assert sheet[f"{u}2"].value == "u₀⁽¹⁾" and sheet[f"{u}2"].comment is not None
    assert sheet[f"{u}3"].value.startswith("=")
    assert "learning_rate" in book.defined_names
    assert len(book["Steps"]._charts) == 3
    assert "sigmoid-vanishing" in book["Scenario"]["A9"].value or any(
        "sigmoid-vanishing" in str(c.value) for c in book["Scenario"]["A"])


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    path = tmp_path / "run.xlsx"
    path.write_bytes(b"previous")
    trace = engine.run(scenario_module.load("xor", steps=2))

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")
    monkeypatch.setattr(writer, "_write_settings", explode)
    with pytest.raises(RuntimeError):
        writer.write(trace, path, force=True)
    assert path.read_bytes() == b"previous"
    assert list(tmp_path.iterdir()) == [path]


def test_too_many_rows_is_refused_before_training(tmp_path, invoke):
    result = invoke("run", "xor", "--steps", "300000", "-o", tmp_path / "big.xlsx")
    assert result.exit_code == 2
    assert "1,048,576" in result.output and "--steps 209714" in result.output
    assert not (tmp_path / "big.xlsx").exists()


def test_too_many_columns_and_too_long_formulas_are_refused(base_raw):
    raw = copy.deepcopy(base_raw)
    raw["data"]["inputs"] = [[0.1] * 130] * 3
    raw["layers"][0]["units"] = 130
    with pytest.raises(LimitError, match="16384 columns"):
        writer.check_scenario_fits(scenario_module.from_dict(raw))
    raw["data"]["inputs"] = [[0.1] * 700] * 3
    raw["layers"][0]["units"] = 2
    with pytest.raises(LimitError, match="8192 characters"):
        writer.check_scenario_fits(scenario_module.from_dict(raw))


def _subnormal_parameters():
    raw = copy.deepcopy(BASE)
    raw["layers"][1].update({"init": "explicit", "weights": [[1e-310], [2.5e-320], [0.5]], "bias": [5e-324]})
    return build(raw)


@pytest.mark.libreoffice(workbooks=_subnormal_parameters)
def test_values_that_cannot_be_plain_cells(recomputed):
    assert writer.constant(1e-310).startswith("=") and writer.constant(float("inf")) == "#NUM!"
    assert recomputed.trace.W[1][0, 1, 0] == 2.5e-320
    report = recomputed.report
    assert report.ok, report.summary()


@pytest.mark.libreoffice(workbooks=lambda: template("leaky-relu-explosion").window(5, 5))
def test_window_starting_from_non_finite_parameters(recomputed):
    trace, report = recomputed.trace, recomputed.report
    assert not np.isfinite(trace.W[0][0]).all()
    assert report.ok, report.summary()


def test_missing_libreoffice_says_how_to_install(monkeypatch, invoke):
    monkeypatch.setattr(libreoffice.shutil, "which", lambda name: None)
    result = invoke("verify", "xor", "--steps", "2")
    assert result.exit_code == 1 and "apt-get install -y libreoffice-calc-nogui" in result.output


def _normalised(normalize):
    raw = copy.deepcopy(BASE)
    raw["data"]["normalize"] = normalize
    return build(raw)


@pytest.mark.libreoffice(workbooks=_normalised)
@pytest.mark.parametrize("normalize", ["standard", "minmax"])
def test_normalised_inputs_are_computed_in_the_data_sheet(recomputed, base_raw, normalize, tmp_path):
    trace, report = recomputed.trace, recomputed.report
    x = np.array(base_raw["data"]["inputs"])
    expected = (x - x.mean(0)) / x.std(0) if normalize == "standard" else (x - x.min(0)) / (x.max(0) - x.min(0))
    np.testing.assert_allclose(trace.scenario.inputs, expected, rtol=1e-14)
    assert report.ok, report.summary()
    path = tmp_path / "n.xlsx"
    writer.write(trace, path)
    data = openpyxl.load_workbook(path)["Data"]
    assert str(data["E2"].value).startswith("=(B2-B$")   # x̂ from the raw cell and the statistics rows


def _residual_network():
    raw = copy.deepcopy(BASE)
    raw["data"]["inputs"] = [[0.5, -1.0, 0.3], [1.5, 0.2, -0.4], [0.1, 0.7, 0.9]]
    raw["layers"] = [{"units": 3, "activation": "tanh", "init": "xavier_uniform", "residual": True},
                     {"units": 3, "activation": "sigmoid", "init": "xavier_uniform", "residual": True},
                     {"units": 1, "activation": "identity", "init": "xavier_uniform"}]
    return build(raw)


@pytest.mark.libreoffice(workbooks=_residual_network)
def test_residual_network_verifies(recomputed):
    trace, report = recomputed.trace, recomputed.report
    assert not np.allclose(trace.a[1], trace.h[1])   # the skip adds a⁽¹⁾
    assert report.ok, report.summary()


# ---------------------------------------------------------------- what every client reads

def _engine_value(trace, key, row):
    """The engine's value of one layout row's cell (Trace.values, for a single row)."""
    one = lambda value: np.array([value or 0], dtype=np.intp)  # noqa: E731
    return trace.values(key, row.kind, one(row.step), one(row.slot), one(row.sample))[0]


def _openpyxl_sheets(path):
    """{sheet: (rows, errors)} read by openpyxl in one pass (cached values, no recalculation): the
    rows as lists of values, an error cell as None (what pandas' reader gives: no value), and
    {(row, column index): error text} of the error cells."""
    book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    sheets = {}
    for sheet in book.worksheets:
        rows, errors = [], {}
        for number, cells in enumerate(sheet.iter_rows(), start=1):
            values = []
            for index, cell in enumerate(cells):
                if cell.data_type == "e":
                    errors[(number, index)] = cell.value
                    values.append(None)
                else:
                    values.append(cell.value)
            rows.append(values)
        sheets[sheet.title] = rows, errors
    book.close()
    return sheets


def _grids(path, read_by_openpyxl=None):
    """Every sheet as a list of rows, read by openpyxl and by python-calamine (two clients that
    do not recalculate). `read_by_openpyxl`: the sheets of _openpyxl_sheets, if already read."""
    from python_calamine import CalamineWorkbook
    sheets = read_by_openpyxl or _openpyxl_sheets(path)
    book = CalamineWorkbook.from_path(str(path))
    by_calamine = {name: book.get_sheet_by_name(name).to_python(skip_empty_area=False) for name in book.sheet_names}
    return {"openpyxl": {name: rows for name, (rows, _) in sheets.items()}, "calamine": by_calamine}


def _at(grid, number, index):
    """The value at 1-based row `number`, 0-based column `index` (None beyond the data)."""
    if number - 1 >= len(grid) or index >= len(grid[number - 1]):
        return None
    return grid[number - 1][index]


def _reads_as(value, engine):
    """A cached value as read equals the engine's: the same float, the same text, and nothing
    (openpyxl: None, calamine: '') where the engine is not finite (an error cell)."""
    missing = value is None or value == "" or (isinstance(value, float) and math.isnan(value))
    if isinstance(engine, str):
        return (value if isinstance(value, str) else "") == engine or (missing and engine == "")
    if isinstance(engine, tuple):   # (value, magnitude of its operands): the value is what is cached
        engine = engine[0]
    engine = float(engine)
    if not math.isfinite(engine):
        return missing
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value) == engine


def _errors(path, sheet):
    """{(row, column index): error text} of a sheet, read by openpyxl (cached values)."""
    book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    found = {}
    for number, row in enumerate(book[sheet].iter_rows(values_only=True), start=1):
        for index, value in enumerate(row):
            if isinstance(value, str) and value.startswith("#"):
                found[(number, index)] = value
    book.close()
    return found


@pytest.mark.parametrize("name", templates.names())
def test_every_formula_carries_the_engines_value(name, tmp_path):
    """openpyxl and calamine read, without recalculation, the engine's value in every formula cell
    of every sheet (an error where the engine is inf/NaN) and every constant bit for bit."""
    trace = engine.run(scenario_module.load(name))
    path = tmp_path / f"{name}.xlsx"
    layout = writer.write(trace, path)
    sheets = _openpyxl_sheets(path)
    grids = _grids(path, sheets)
    trace_errors = sheets["Trace"][1]
    checked = 0
    for row in layout.rows():
        for column in layout.columns[2:]:
            if getattr(column, row.kind) is None:
                continue
            expected = _engine_value(trace, column.key, row)
            for reader, grid in grids.items():
                got = _at(grid["Trace"], row.number, column.index)
                assert _reads_as(got, expected), (reader, f"Trace!{column.letter}{row.number}", got, expected)
            if not math.isfinite(float(expected)):
                assert trace_errors[(row.number, column.index)] == "#NUM!"
            checked += 1
    assert checked > 100
    for table in writer.table_layouts(trace, layout):
        errors = sheets[table.title][1]
        for number, (_, expected) in enumerate(table.expected(), start=table.header_rows + 1):
            for index, value in expected.items():
                if isinstance(value, tuple):   # (value, magnitude of its operands)
                    value = value[0]
                for reader, grid in grids.items():
                    got = _at(grid[table.title], number, index)
                    assert _reads_as(got, value), (reader, table.title, number, index, got, value)
                if not isinstance(value, str) and not math.isfinite(float(value)):
                    assert errors[(number, index)] == ("#N/A" if table.title == "Steps" else "#NUM!")
    nonfinite = sum(int((~np.isfinite(g)).sum()) for g in trace.grad_W)
    assert (len(trace_errors) > 0) == (nonfinite > 0)


def test_data_formulas_carry_the_normalised_inputs(base_raw, tmp_path):
    raw = copy.deepcopy(base_raw)
    raw["data"]["normalize"] = "standard"
    trace = build(raw)
    path = tmp_path / "n.xlsx"
    writer.write(trace, path)
    for grid in _grids(path).values():
        data = grid["Data"]
        assert [[float(v) for v in row[4:6]] for row in data[1:4]] == trace.scenario.inputs.tolist()
        raw_inputs = trace.scenario.raw_inputs
        assert [float(v) for v in data[5][1:3]] == (raw_inputs.sum(0) / 3).tolist()


def test_constants_are_the_engines_floats_bit_for_bit(base_raw, tmp_path):
    """openpyxl wrote 16 significant digits (0.16432407212873557 read back as 0.1643240721287356)."""
    raw = copy.deepcopy(base_raw)
    weights = [[0.16432407212873557, -0.1, 1 / 3], [2 / 3, 1e-300, -7.000000000000001]]
    raw["layers"][0] = {"units": 3, "activation": "tanh", "init": "explicit", "weights": weights,
                        "bias": [0.1 + 0.2, 5e-324, -0.0]}
    raw["data"]["inputs"] = [[0.1 + 0.2, 1 / 7], [1e300, -2 / 3], [np.nextafter(1, 2), 123456.78901234567]]
    trace = build(raw)
    path = tmp_path / "c.xlsx"
    layout = writer.write(trace, path)
    first_total = layout.total_row(0)
    for reader, grid in _grids(path).items():
        for l, kind in ((1, "W"), (1, "b"), (2, "W"), (2, "b")):
            store = (trace.W if kind == "W" else trace.b)[l - 1][0]
            for index in np.ndindex(store.shape):
                column = layout.cell((kind, l, index))
                got = _at(grid["Trace"], first_total, openpyxl.utils.column_index_from_string(column) - 1)
                assert float(got) == store[index], (reader, kind, l, index, got)   # == also holds where a reader gives -0.0 as 0
        data = grid["Data"]
        for i, row in enumerate(raw["data"]["inputs"]):
            assert [float(v) for v in data[i + 1][1:3]] == row
        settings = {row[0]: row[1] for row in grid["Settings"][1:]}
        assert settings["learning_rate"] == 0.1
    assert trace.W[0][0, 0, 0] == 0.16432407212873557
    cells = {c.get("r"): c.find(f"{S}v").text for c in _part(path, "xl/worksheets/sheet1.xml").iter(f"{S}c")
             if c.find(f"{S}v") is not None}
    for l, kind in ((1, "W"), (1, "b")):
        store = (trace.W if kind == "W" else trace.b)[l - 1][0]
        for index in np.ndindex(store.shape):
            text = cells.get(f"{layout.cell((kind, l, index))}{first_total}")
            assert text == repr(float(store[index])) or (text is None and store[index] == 5e-324), (kind, index, text)


def test_two_runs_give_byte_identical_files(tmp_path, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    trace = engine.run(scenario_module.load("leaky-relu-explosion"))
    first, second = tmp_path / "a.xlsx", tmp_path / "b.xlsx"
    writer.write(trace, first)
    writer.write(engine.run(scenario_module.load("leaky-relu-explosion")), second)
    assert first.read_bytes() == second.read_bytes()
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    third = tmp_path / "c.xlsx"
    writer.write(trace, third)
    with zipfile.ZipFile(third) as book:
        assert b"2023-11-14T22:13:20Z" in book.read("docProps/core.xml")
        assert {info.date_time for info in book.infolist()} == {(2023, 11, 14, 22, 13, 20)}


def _part(path, name):
    with zipfile.ZipFile(path) as book:
        return ET.fromstring(book.read(name))


C = "{http://schemas.openxmlformats.org/drawingml/2006/chart}"
S = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"


@pytest.mark.parametrize("name, steps", [("xor", 300), ("leaky-relu-explosion", 6), ("small-lr", 40)])
def test_charts_are_honest(name, steps, tmp_path):
    """No smoothing, blanks and #N/A as gaps, a readable number of x labels, labels low."""
    path = tmp_path / "c.xlsx"
    writer.write(engine.run(scenario_module.load(name)), path)
    with zipfile.ZipFile(path) as book:
        names = sorted(n for n in book.namelist() if n.startswith("xl/charts/chart")
                       and b"lineChart" in book.read(n))   # the Steps sheet's (Histograms has bars)
    assert len(names) == 3
    for chart_name in names:
        chart = _part(path, chart_name)
        series = chart.findall(f".//{C}ser")
        assert series and all(s.find(f"{C}smooth").get("val") == "0" for s in series)
        # the range ends with the empty row below the table (LibreOffice draws #N/A as gaps then)
        assert all(s.find(f"{C}val/{C}numRef/{C}f").text.endswith(f"${steps + 2}") for s in series)
        assert chart.find(f".//{C}dispBlanksAs").get("val") == "gap"
        axis = chart.find(f".//{C}catAx")
        skip = int(axis.find(f"{C}tickLblSkip").get("val"))
        assert int(axis.find(f"{C}tickMarkSkip").get("val")) == skip
        assert steps / skip <= charts.MAX_LABELS and (skip == 1 or steps / skip > charts.MAX_LABELS / 5)
        assert axis.find(f"{C}axPos").get("val") == "b"
        for axis in chart.find(f".//{C}plotArea"):
            if axis.tag in (f"{C}catAx", f"{C}valAx"):
                assert axis.find(f"{C}tickLblPos").get("val") == "low"


def test_non_finite_steps_are_gaps_not_zeros(tmp_path):
    """Where the engine is not finite the Steps cells evaluate to #N/A (a chart gap)."""
    trace = engine.run(scenario_module.load("leaky-relu-explosion"))
    path = tmp_path / "e.xlsx"
    writer.write(trace, path)
    sheet = _part(path, "xl/worksheets/sheet2.xml")
    cells = {c.get("r"): c for c in sheet.iter(f"{S}c")}
    assert not np.isfinite(trace.loss[-1])
    last = trace.steps + 1
    for letter in "BCDEF":
        cell = cells[f"{letter}{last}"]
        assert cell.find(f"{S}f").text.startswith("IFERROR(") and cell.find(f"{S}f").text.endswith(",NA())")
        assert cell.get("t") == "e" and cell.find(f"{S}v").text == "#N/A"
    assert cells["E2"].get("t") is None and float(cells["E2"].find(f"{S}v").text) == np.log10(abs(trace.W[0][0, 0, 0]))


def test_highlights_and_number_formats(tmp_path):
    """Differential fills set bgColor (Excel) and fgColor (LibreOffice); numbers between 1e-3 and
    1e3 in a fixed format, larger and smaller ones scientific."""
    path = tmp_path / "h.xlsx"
    writer.write(engine.run(scenario_module.load("xor", steps=3)), path)
    styles = _part(path, "xl/styles.xml")
    fills = styles.findall(f"{S}dxfs/{S}dxf/{S}fill/{S}patternFill")
    assert fills and all(f.find(f"{S}fgColor").get("rgb") == f.find(f"{S}bgColor").get("rgb") for f in fills)
    formats = {f.get("formatCode") for f in styles.iter(f"{S}numFmt")}
    assert {"0.000000", "0.000E+00"} <= formats
    rules = [r.find(f"{S}formula").text for r in sorted(_part(path, "xl/worksheets/sheet1.xml").iter(f"{S}cfRule"),
                                                         key=lambda r: int(r.get("priority")))]
    assert rules[0] == "ISERROR(C3)" and "C3<>INT(C3)" in rules[-1]


def test_headers_are_not_cut(tmp_path):
    path = tmp_path / "w.xlsx"
    trace = engine.run(scenario_module.load("batchnorm-deep"))
    writer.write(trace.window(3, 5), path)
    book = openpyxl.load_workbook(path)
    for sheet in ("Trace", "Steps", "Diagnosis", "ChainRule", "Histograms", "Settings", "Data"):
        ws = book[sheet]
        header_row = 2 if sheet == "Trace" else 1
        for cell in ws[header_row]:
            if cell.value:
                assert ws.column_dimensions[cell.column_letter].width >= len(cell.value), (sheet, cell.value)
                # a layer index is written in superscript digits: ⁽¹⁾, never ⁽1⁾
                assert not re.search(r"⁽[0-9]", cell.value), (sheet, cell.value)
    assert book["Trace"].column_dimensions["B"].width >= len("Σ θ from engine")
    assert book["Steps"]["C1"].value == "‖∇⁽¹⁾‖" and book["Diagnosis"]["B1"].value == "‖∇⁽¹⁾‖"


def test_scenario_text_that_xml_forbids_stays_well_formed(tmp_path):
    """The loader refuses such text (test_scenario); the writer escapes it all the same."""
    text = scenario_module.load("xor").text + "\n# a comment with \ufffe and \uffff\n"
    toml = tmp_path / "odd.toml"
    toml.write_text(text, encoding="utf-8")
    with pytest.raises(scenario_module.ScenarioError):
        scenario_module.load(str(toml))
    trace = engine.run(scenario_module.load("xor"))
    trace.scenario = dataclasses.replace(trace.scenario, text=text)
    path = tmp_path / "odd.xlsx"
    writer.write(trace, path)
    with zipfile.ZipFile(path) as book:
        for name in book.namelist():
            if name.endswith(".xml"):
                ET.fromstring(book.read(name))
    lines = [row[0] for row in _grids(path)["calamine"]["Scenario"]]
    assert any("a comment with" in str(line) for line in lines)


def _explosion_and_workbook(folder):
    trace = engine.run(scenario_module.load("leaky-relu-explosion"))
    path = folder / "cached-explosion.xlsx"
    writer.write(trace, path)
    return [trace, path]


@pytest.mark.libreoffice(workbooks=_explosion_and_workbook)
def test_cached_values_survive_recalculation(recomputed):
    """LibreOffice's recomputed values equal the cached ones (to verify's tolerance) and it keeps
    the #N/A gaps of the Steps sheet."""
    verified, recomputed = recomputed
    assert verified.report.ok, verified.report.summary()
    steps = _errors(recomputed, "Steps")
    assert steps and set(steps.values()) == {"#N/A"}


@pytest.mark.parametrize("chunk", [1, 7, 10_000])
def test_cached_values_across_chunks_and_short_batches(base_raw, tmp_path, monkeypatch, chunk):
    """Rows are looked up a chunk of whole steps at a time; any chunk size gives the same file,
    with short last batches (padding) and windows."""
    raw = copy.deepcopy(base_raw)
    raw["training"]["batch"] = 2
    raw["steps"] = 9
    raw["optimizer"] = {"name": "adam", "lr": 0.05}
    trace = build(raw).window(2, 8)
    monkeypatch.setattr(writer, "_CHUNK_ROWS", chunk)
    path = tmp_path / "w.xlsx"
    layout = writer.write(trace, path)
    grid = _grids(path)["calamine"]["Trace"]
    for row in layout.rows():
        for column in layout.columns[2:]:
            if getattr(column, row.kind) is not None:
                expected = _engine_value(trace, column.key, row)
                assert _reads_as(_at(grid, row.number, column.index), expected), (column.letter, row.number)
    monkeypatch.setattr(writer, "_CHUNK_ROWS", 3)
    writer.write(trace, tmp_path / "again.xlsx")
    assert (tmp_path / "again.xlsx").read_bytes() == path.read_bytes()
