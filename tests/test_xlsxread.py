"""The fast value reader against openpyxl's reader, and on the cell forms LibreOffice and Gnumeric
write (errors, formula strings, inline strings, booleans, whitespace between elements)."""
from pathlib import Path

import numpy as np
from openpyxl import load_workbook

from tracer.recalc import xlsxread

EXAMPLES = [Path(__file__).resolve().parent.parent / "examples" / "workbooks" / f"{name}.xlsx"
            for name in ("linear-regression", "leaky-relu-explosion", "sigmoid-vanishing")]


def test_same_values_as_openpyxl_on_the_example_workbooks():
    for path in EXAMPLES:
        book = load_workbook(path, read_only=True, data_only=True)
        titles = book.sheetnames
        expected = {title: [list(row) for row in book[title].iter_rows(values_only=True)] for title in titles}
        book.close()
        found = xlsxread.read_values(path, titles)
        for title in titles:
            for r, row in enumerate(expected[title], start=1):
                for c, value in enumerate(row):
                    assert found[title].value(r, c) == value, (path.name, title, r, c)


def test_cell_forms_of_both_spreadsheets():
    xml = (b'<sheetData><row r="1">'
           b'<c r="A1" s="3" t="n"><f aca="false">B1*2</f><v>-0.811742715519202</v></c>'
           b'<c r="B1" s="1" t="e"><f aca="false">EXP(1000)</f><v>#NUM!</v></c>'
           b'<c r="C1" s="1" t="str"><f>IF(1&lt;2,"a&amp;b","")</f><v>a&amp;b</v></c>'
           b'<c r="D1" t="s"><v>1</v></c><c r="E1" t="b"><v>1</v></c><c r="F1" s="2"/>'
           b'</row><row r="2">\n  <c r="A2" s="4">\n    <f>Data!B2</f>\n    <v>1.2345678901234567e-300</v>\n  </c>\n'
           b'  <c r="C2" s="3" t="inlineStr">\n    <is>\n      <t>flag\xe2\x81\xbd1\xe2\x81\xbe</t>\n    </is>\n  </c>\n'
           b'<c r="AB2" t="str"><f>""</f><v></v></c></row></sheetData>')
    sheet = xlsxread._parse(xml, ["zero", "one"])
    assert sheet.value(1, 0) == -0.811742715519202 and sheet.value(1, 1) == "#NUM!"
    assert sheet.kinds[0, 1] == xlsxread.ERROR and sheet.value(1, 2) == "a&b" and sheet.kinds[0, 2] == xlsxread.TEXT
    assert sheet.value(1, 3) == "one" and sheet.value(1, 4) == 1 and sheet.value(1, 5) is None
    assert sheet.value(2, 0) == 1.2345678901234567e-300 and sheet.value(2, 2) == "flag⁽1⁾"
    assert sheet.value(2, 27) is None and sheet.value(9, 99) is None
    assert np.isnan(sheet.numbers[0, 1])


def test_unknown_cell_forms_fall_back_to_openpyxl():
    # attributes in another order: the pattern does not know it, so the sheet is not guessed at
    assert xlsxread._parse(b'<row r="1"><c t="n" r="A1"><v>1</v></c></row>', []) is None
