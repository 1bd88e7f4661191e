"""Read the cached values of an .xlsx fast: a recomputed workbook's sheets as numpy arrays.

openpyxl's reader builds a Python object per cell (about 10 µs each); verifying a workbook of a
million formula cells spent more time reading than LibreOffice spent recomputing. This reader
matches the cells of a sheet's XML with one regular expression and converts the values with
numpy. Cells it does not recognise (another writer's attribute order, say) make it
fall back to openpyxl for that sheet, so the result never depends on the fast path.
"""
from dataclasses import dataclass, field
import html
import posixpath
import re
import zipfile
from xml.etree import ElementTree

import numpy as np

EMPTY, NUMBER, ERROR, TEXT = 0, 1, 2, 3

_MAIN = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
_RELATIONSHIP = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}id"
_CELL = re.compile(
    rb'<c r="([A-Z]{1,3})([0-9]+)"(?: s="[0-9]+")?(?: t="([a-zA-Z]+)")?\s*'
    rb'(?:/>|>\s*(?:<f(?:\s[^>]*)?/>|<f(?:\s[^>]*)?>[^<]*</f>)?\s*(?:<v>([^<]*)</v>|<v/>|<is>(.*?)</is>)?\s*</c>)',
    re.S)
_TEXT = re.compile(rb"<t(?:\s[^>]*)?>([^<]*)</t>")


@dataclass
class SheetValues:
    """A sheet's values: `numbers` (float, NaN elsewhere) and `kinds` (EMPTY, NUMBER, ERROR, TEXT)
    indexed [row − 1, column − 1]; the text of error and text cells in `texts`."""

    numbers: np.ndarray
    kinds: np.ndarray
    texts: dict = field(default_factory=dict)   # (row − 1, column − 1) -> str

    def value(self, row, column):
        """The value at 1-based `row`, 0-based `column` as openpyxl gives it: float, str or None."""
        r, c = row - 1, column
        if r >= self.kinds.shape[0] or c >= self.kinds.shape[1]:
            return None
        kind = self.kinds[r, c]
        if kind == NUMBER:
            number = float(self.numbers[r, c])
            return int(number) if number.is_integer() and abs(number) < 1e16 else number   # as openpyxl reads "5"
        return self.texts.get((r, c)) if kind != EMPTY else None

    def cover(self, rows, columns):
        """Grow the arrays (empty cells) to at least `rows` × `columns`."""
        extra = (max(0, rows - self.kinds.shape[0]), max(0, columns - self.kinds.shape[1]))
        if any(extra):
            self.numbers = np.pad(self.numbers, ((0, extra[0]), (0, extra[1])), constant_values=np.nan)
            self.kinds = np.pad(self.kinds, ((0, extra[0]), (0, extra[1])), constant_values=EMPTY)
        return self

    def rows(self, min_row, max_col):
        """Tuples of the values of rows min_row.. (1-based), columns 1..max_col."""
        for row in range(min_row, self.kinds.shape[0] + 1):
            yield tuple(self.value(row, column) for column in range(max_col))


def read_values(path, titles):
    """{title: SheetValues} for the sheets `titles` of the workbook at `path`."""
    with zipfile.ZipFile(path) as archive:
        parts = _sheet_parts(archive)
        shared = _shared_strings(archive)
        found = {}
        for title in titles:
            if title not in parts:
                raise KeyError(f"{path} has no sheet {title!r}")
            found[title] = _parse(archive.read(parts[title]), shared)
    for title, values in found.items():
        if values is None:
            found[title] = _read_with_openpyxl(path, title)
    return found


def _sheet_parts(archive):
    """{sheet title: path of its XML part in the archive}."""
    workbook = ElementTree.fromstring(archive.read("xl/workbook.xml"))
    relations = ElementTree.fromstring(archive.read("xl/_rels/workbook.xml.rels"))
    targets = {r.get("Id"): r.get("Target") for r in relations}
    parts = {}
    for sheet in workbook.iter(f"{_MAIN}sheet"):
        target = targets[sheet.get(_RELATIONSHIP)]
        parts[sheet.get("name")] = target.lstrip("/") if target.startswith("/") else posixpath.normpath(f"xl/{target}")
    return parts


def _shared_strings(archive):
    try:
        table = ElementTree.fromstring(archive.read("xl/sharedStrings.xml"))
    except KeyError:
        return []
    return ["".join(t.text or "" for t in item.iter(f"{_MAIN}t")) for item in table.iter(f"{_MAIN}si")]


def _parse(xml, shared):
    """SheetValues of one sheet part, or None when a cell is not in the form the pattern knows."""
    found = _CELL.findall(xml)
    if len(found) != xml.count(b"<c ") + xml.count(b"<c>"):
        return None
    if not found:
        return SheetValues(np.full((0, 0), np.nan), np.zeros((0, 0), dtype=np.int8))
    letters, numbers, types, values, inline = zip(*found)
    values = [b"".join(_TEXT.findall(text)) if text else value for value, text in zip(values, inline)]
    rows = np.array(numbers, dtype="S7").astype(np.int64) - 1
    unique, inverse = np.unique(np.array(letters, dtype="S3"), return_inverse=True)
    columns = np.array([_column_index(letter) for letter in unique], dtype=np.int64)[inverse]
    types = np.array(types, dtype="S9")
    raw = np.array(values, dtype=object)
    shape = (int(rows.max()) + 1, int(columns.max()) + 1)
    sheet = SheetValues(np.full(shape, np.nan), np.zeros(shape, dtype=np.int8))
    has_value = np.array([bool(v) for v in values])
    numeric = has_value & ((types == b"") | (types == b"n"))
    sheet.numbers[rows[numeric], columns[numeric]] = np.array(raw[numeric].tolist(), dtype="S40").astype(float)
    sheet.kinds[rows[numeric], columns[numeric]] = NUMBER
    booleans = has_value & (types == b"b")
    sheet.numbers[rows[booleans], columns[booleans]] = np.array([float(v) for v in raw[booleans]])
    sheet.kinds[rows[booleans], columns[booleans]] = NUMBER
    for k in np.flatnonzero(has_value & ~numeric & ~booleans):   # an empty text reads as an empty cell
        kind, text = types[k], raw[k]
        if kind == b"s":
            text = shared[int(text)]
        else:
            text = html.unescape(text.decode("utf-8"))
        sheet.kinds[rows[k], columns[k]] = ERROR if kind == b"e" or _looks_like_error(text) else TEXT
        sheet.texts[(int(rows[k]), int(columns[k]))] = text
    return sheet


def _looks_like_error(text):
    return text.startswith("#") or text.startswith("Err:")


def _column_index(letters):
    """0-based index of column letters (b"A" -> 0, b"AA" -> 26)."""
    index = 0
    for letter in letters.decode("ascii"):
        index = index * 26 + ord(letter) - 64
    return index - 1


def _read_with_openpyxl(path, title):
    import warnings
    from openpyxl import load_workbook
    with warnings.catch_warnings():   # Gnumeric's files have no default style; openpyxl says so
        warnings.filterwarnings("ignore", "Workbook contains no default style", UserWarning)
        book = load_workbook(path, read_only=True, data_only=True)
    try:
        rows = [list(values) for values in book[title].iter_rows(values_only=True)]
    finally:
        book.close()
    width = max((len(r) for r in rows), default=0)
    sheet = SheetValues(np.full((len(rows), width), np.nan), np.zeros((len(rows), width), dtype=np.int8))
    for r, values in enumerate(rows):
        for c, value in enumerate(values):
            if value is None:
                continue
            if isinstance(value, (bool, int, float)):
                sheet.numbers[r, c], sheet.kinds[r, c] = float(value), NUMBER
            else:
                text = str(value)
                sheet.kinds[r, c] = ERROR if _looks_like_error(text) else TEXT
                sheet.texts[(r, c)] = text
    return sheet
