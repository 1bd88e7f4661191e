"""The streamed package parts: well-formed XML, exact numbers, fixed dates."""
import io
import struct
import xml.etree.ElementTree as ET
import zipfile

from hypothesis import given, strategies as st
import numpy as np
import pytest

from tracer.workbook import xlsx

MAIN = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"


def _parse_row(text):
    return ET.fromstring(f'<sheetData xmlns="{MAIN[1:-1]}">{text}</sheetData>')[0]


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_numbers_read_back_bit_for_bit(value):
    text = xlsx.number(value)
    assert struct.pack("<d", float(text)) == struct.pack("<d", value)
    assert len(text) <= len(repr(value))          # shortest: repr, never 17 forced digits


@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=60))
def test_array_numbers_are_repr_of_each_value(values):
    block = np.array(values + [0.0, -0.0], dtype=float).reshape(1, -1)
    texts = xlsx.numbers(block)
    assert texts.shape == block.shape
    assert texts[0].tolist() == [repr(float(v)) for v in values] + ["0.0", "-0.0"]


def test_non_finite_numbers_become_error_cells():
    assert xlsx.number(float("inf")) is None and xlsx.number(float("nan")) is None
    cell = _parse_row(xlsx.row(3, [xlsx.formula_cell("B3", "EXP(A3)", float("inf"))]))[0]
    assert cell.get("t") == "e" and cell.find(f"{MAIN}v").text == "#NUM!"
    assert cell.find(f"{MAIN}f").text == "EXP(A3)"
    na = _parse_row(xlsx.row(3, [xlsx.formula_cell("B3", "NA()", float("nan"), error="#N/A")]))[0]
    assert na.find(f"{MAIN}v").text == "#N/A"


def test_cells_of_every_kind_are_well_formed():
    cells = [xlsx.value_cell("A1", 3), xlsx.value_cell("B1", 0.1), xlsx.value_cell("C1", "a < b & c"),
             xlsx.value_cell("D1", "#NUM!"), xlsx.value_cell("E1", True), xlsx.value_cell("F1", None),
             xlsx.formula_cell("G1", 'IF(A1>0,"ok","<no>")', "ok"), xlsx.formula_cell("H1", "A1&B1"),
             xlsx.formula_cell("I1", "A1*2", 6.0, style_attr=xlsx.style(4))]
    row = _parse_row(xlsx.row(1, cells))
    by_ref = {c.get("r"): c for c in row}
    assert sorted(by_ref) == ["A1", "B1", "C1", "D1", "E1", "G1", "H1", "I1"]
    assert by_ref["C1"].find(f"{MAIN}is/{MAIN}t").text == "a < b & c"
    assert by_ref["G1"].get("t") == "str" and by_ref["G1"].find(f"{MAIN}f").text == 'IF(A1>0,"ok","<no>")'
    assert by_ref["H1"].find(f"{MAIN}v") is None       # no cached value known
    assert by_ref["I1"].get("s") == "4" and by_ref["I1"].find(f"{MAIN}v").text == "6.0"


@pytest.mark.parametrize("character", ["\x01", "\x0b", "\ufffe", "\uffff", "\ud800"])
def test_text_that_xml_forbids_is_escaped(character):
    row = _parse_row(xlsx.row(1, [xlsx.value_cell("A1", f"left{character}right _x0041_")]))
    text = row[0].find(f"{MAIN}is/{MAIN}t").text
    assert text == f"left_x{ord(character):04X}_right _x005F_x0041_"


def test_row_template_formats_a_whole_row():
    template = xlsx.row_template([("A", None, ""), '<c r="B{r}"><v>7</v></c>', ("C", "A{r}*B{p}<1", xlsx.style(2))])
    row = _parse_row(template.format("12", "0.5", r=4, p=9))
    assert [c.get("r") for c in row] == ["A4", "B4", "C4"]
    assert row[2].find(f"{MAIN}f").text == "A4*B9<1" and row[2].find(f"{MAIN}v").text == "0.5"


def _skeleton():
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as book:
        book.writestr("xl/worksheets/sheet1.xml", f'<worksheet xmlns="{MAIN[1:-1]}"><sheetData><row r="1"/></sheetData><cols/></worksheet>')
        book.writestr("xl/worksheets/sheet2.xml", f'<worksheet xmlns="{MAIN[1:-1]}"><sheetData /></worksheet>')
        book.writestr("docProps/core.xml", "<old/>")
    data.seek(0)
    return data


def test_package_streams_rows_into_sheet_data_with_fixed_dates(tmp_path, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    rows = (xlsx.row(n, [xlsx.value_cell(f"A{n}", float(n) / 3)]) for n in range(2, 2000))
    path = tmp_path / "out.xlsx"
    xlsx.write_package(_skeleton(), path, {"xl/worksheets/sheet1.xml": rows,
                                           "xl/worksheets/sheet2.xml": iter([xlsx.row(1, [])])},
                       xlsx.package_time(), replace={"docProps/core.xml": b"<new/>"})
    with zipfile.ZipFile(path) as book:
        assert {info.date_time for info in book.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        first = ET.fromstring(book.read("xl/worksheets/sheet1.xml"))
        second = ET.fromstring(book.read("xl/worksheets/sheet2.xml"))
        assert book.read("docProps/core.xml") == b"<new/>"
    numbers = first.find(f"{MAIN}sheetData")
    assert len(numbers) == 1999 and float(numbers[-1][0][0].text) == 1999 / 3
    assert first[1].tag == f"{MAIN}cols"                 # what followed <sheetData> is kept
    assert len(second.find(f"{MAIN}sheetData")) == 1


def test_source_date_epoch_sets_the_date(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert xlsx.package_time().timetuple()[:6] == (2023, 11, 14, 22, 13, 20)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    assert xlsx.package_time().year == 1980               # zip dates start in 1980


def test_a_failing_row_source_raises_and_stops(tmp_path):
    def rows():
        yield xlsx.row(1, [])
        raise RuntimeError("engine failed")
    with pytest.raises(RuntimeError, match="engine failed"):
        xlsx.write_package(_skeleton(), tmp_path / "x.xlsx", {"xl/worksheets/sheet1.xml": rows()}, xlsx.package_time())


def test_error_codes_are_error_cells():
    for code in sorted(xlsx.ERRORS):
        cell = _parse_row(xlsx.row(1, [xlsx.value_cell("A1", code)]))[0]
        assert cell.get("t") == "e" and cell.find(f"{MAIN}v").text == code
