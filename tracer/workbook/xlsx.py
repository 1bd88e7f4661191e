"""The .xlsx package, written fast and the same every time.

openpyxl writes the small parts it does well (styles, header rows with their comments,
conditional formats, charts, defined names, print titles) into a skeleton package in memory;
`write_package` copies that package to disk and streams each big sheet's rows into its
`<sheetData>`, so the rows never pass through openpyxl's per-cell objects. A row is XML text
made here: numbers with `repr` (the shortest text that reads back as the same float), formulas
with the engine's value as their cached result (`<f>…</f><v>…</v>`; an error `t="e"` where the
engine is non-finite), text as inline strings.

Every zip entry carries one fixed date (SOURCE_DATE_EPOCH when set, else 1980-01-01), and so
does docProps/core.xml: one scenario gives byte-identical files.
"""
import datetime
import math
import os
import re
import threading
import queue
import zipfile

import numpy as np

ERRORS = frozenset(("#NULL!", "#DIV/0!", "#VALUE!", "#REF!", "#NAME?", "#NUM!", "#N/A"))
NO_VALUE = object()         # a formula whose cached result is unknown (written without <v>)
COMPRESS_LEVEL = 1          # deflate level of the sheet parts: 1 is ~5x faster than 6, files ~20% larger
_CHUNK = 256                # rows joined before one write into the zip stream
_INFINITY = math.inf
# characters XML 1.0 forbids, and "_x" sequences that would read as an escape: written as _xHHHH_
_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]|_(?=x[0-9A-Fa-f]{4}_)")
_SHEET_DATA = re.compile(rb"<sheetData\s*/>|</sheetData>")


def escape(text):
    """Text as XML character data: & < > escaped, forbidden characters as OOXML _xHHHH_ escapes."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if _UNSAFE.search(text):
        text = _UNSAFE.sub(lambda m: f"_x{ord(m.group()):04X}_", text)
    return text


def _markup(text):
    """A formula as XML character data (formulas are made by tracer: only & < > need escaping)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def number(value):
    """A finite float's shortest round-trip text; None when it is not finite (NaN, ±inf)."""
    value = float(value)
    return repr(value) if -_INFINITY < value < _INFINITY else None


def numbers(block):
    """repr of every entry of a float array, as an object array of the same shape; each distinct
    value (bit pattern: -0.0 is not 0.0) is converted once (data columns and zeros repeat)."""
    block = np.ascontiguousarray(block, dtype=np.float64)
    distinct, inverse = np.unique(block.view(np.int64), return_inverse=True)
    texts = np.array(list(map(float.__repr__, distinct.view(np.float64).tolist())), dtype=object)
    return texts[inverse.reshape(block.shape)]


def style(index):
    """The s="…" attribute of a cell style id (nothing for the default style 0)."""
    return f' s="{index}"' if index else ""


def value_cell(ref, value, style_attr=""):
    """A constant cell: number, error code (#NUM!) or inline text; None or empty text gives no
    cell (every reader then sees an empty cell, not sometimes '' and sometimes None)."""
    if value is None or value == "":
        return ""
    if isinstance(value, (bool, np.bool_)):
        return f'<c r="{ref}"{style_attr} t="b"><v>{int(value)}</v></c>'
    if isinstance(value, (int, np.integer)):
        return f'<c r="{ref}"{style_attr}><v>{int(value)}</v></c>'
    if isinstance(value, float):
        text = number(value)
        return (f'<c r="{ref}"{style_attr}><v>{text}</v></c>' if text is not None
                else f'<c r="{ref}"{style_attr} t="e"><v>#NUM!</v></c>')
    if value in ERRORS:
        return f'<c r="{ref}"{style_attr} t="e"><v>{value}</v></c>'
    return f'<c r="{ref}"{style_attr} t="inlineStr"><is><t xml:space="preserve">{escape(value)}</t></is></c>'


def formula_cell(ref, formula, cached=NO_VALUE, style_attr="", error="#NUM!"):
    """A formula cell (`formula` without its "=", not yet escaped) with its cached result:
    a number, `error` where the number is not finite, a string (t="str"), or none."""
    body = f"<f>{_markup(formula)}</f>"
    if cached is NO_VALUE or cached is None:
        return f'<c r="{ref}"{style_attr}>{body}</c>'
    if isinstance(cached, str):
        if cached in ERRORS:
            return f'<c r="{ref}"{style_attr} t="e">{body}<v>{cached}</v></c>'
        return f'<c r="{ref}"{style_attr} t="str">{body}<v>{escape(cached)}</v></c>'
    if isinstance(cached, bool):
        return f'<c r="{ref}"{style_attr} t="b">{body}<v>{int(cached)}</v></c>'
    text = number(cached)
    if text is None:
        return f'<c r="{ref}"{style_attr} t="e">{body}<v>{error}</v></c>'
    return f'<c r="{ref}"{style_attr}>{body}<v>{text}</v></c>'


def row(number_, cells):
    """One <row> element from rendered cells."""
    return f'<row r="{number_}">{"".join(cells)}</row>'


def row_template(cells):
    """A str.format template of a whole row whose formula cells all have finite cached values.

    `cells` lists, in column order, (column letter, formula template or None, style attribute)
    tuples, or raw XML strings put in as they are. Formula templates use the layout's named
    placeholders ({r} the row, {p}, …). The template takes one positional argument per tuple, in
    order: a constant number, or the text of a formula's cached value; and the placeholders as
    keywords, so a whole row costs one `format` call.
    """
    parts, position = ['<row r="{r}">'], 0
    for cell in cells:
        if isinstance(cell, str):
            parts.append(cell)
            continue
        letter, formula, style_attr = cell
        body = "" if formula is None else f"<f>{_markup(formula)}</f>"
        parts.append(f'<c r="{letter}{{r}}"{style_attr}>{body}<v>{{{position}}}</v></c>')
        position += 1
    parts.append("</row>")
    return "".join(parts)


def package_time():
    """The date of every zip entry and of docProps: SOURCE_DATE_EPOCH (UTC) when set, else 1980-01-01."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if epoch.isdigit():
        moment = datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc).replace(tzinfo=None)
        return max(moment, datetime.datetime(1980, 1, 1))
    return datetime.datetime(1980, 1, 1)


def _entry(name, moment):
    info = zipfile.ZipInfo(name, date_time=moment.timetuple()[:6])
    info.compress_type = zipfile.ZIP_DEFLATED
    info.create_system = 3
    info.external_attr = 0o644 << 16
    setattr(info, "compress_level" if hasattr(zipfile.ZipInfo, "compress_level") else "_compresslevel", COMPRESS_LEVEL)
    return info


def write_package(skeleton, path, bodies, moment, replace=None):
    """Copy the package `skeleton` (bytes-like file object) to `path`, entry by entry, with the
    date `moment`; stream `bodies[part]` (an iterable of <row> XML texts) into the end of that
    part's <sheetData>; `replace[part]` (bytes) replaces a part's content."""
    replace = replace or {}
    with zipfile.ZipFile(skeleton) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            data = replace.get(info.filename) or source.read(info)
            entry = _entry(info.filename, moment)
            if info.filename not in bodies:
                target.writestr(entry, data)
                continue
            found = _SHEET_DATA.search(data)
            head = data[:found.start()] + (b"<sheetData>" if found.group().endswith(b"/>") else b"")
            with target.open(entry, "w", force_zip64=True) as stream:
                _stream(stream, head, bodies[info.filename], b"</sheetData>" + data[found.end():])


def _stream(stream, head, rows, tail):
    """Write head, the rows (joined in chunks) and tail to `stream`. Deflating and writing run in
    a second thread (zlib releases the GIL), overlapping the rendering of the next rows."""
    chunks = queue.Queue(maxsize=8)          # bounded: memory does not grow with the rows
    failure = []

    def drain():
        try:
            while (chunk := chunks.get()) is not None:
                if not failure:
                    stream.write(chunk)
        except BaseException as error:  # noqa: BLE001 - re-raised in the producing thread
            failure.append(error)
            while chunks.get() is not None:
                pass

    worker = threading.Thread(target=drain, name="xlsx-deflate", daemon=True)
    worker.start()
    try:
        chunks.put(head)
        buffer = []
        for text in rows:
            buffer.append(text)
            if len(buffer) >= _CHUNK:
                chunks.put("".join(buffer).encode())
                buffer = []
                if failure:
                    break
        chunks.put("".join(buffer).encode())
        chunks.put(tail)
    finally:
        chunks.put(None)
        worker.join()
    if failure:
        raise failure[0]
