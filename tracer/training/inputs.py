"""Reading the user's text files (scenarios, data CSVs, hand CSVs, --map files).

Regular files only (a device such as /dev/zero, a FIFO or a folder would read forever or not at
all), at most MAX_BYTES, UTF-8 with an optional byte-order mark. Each problem is one sentence,
raised as ValueError for the caller to attach to its file and key.
"""
import csv
import io
import os
import stat

MAX_BYTES = 64 * 1024 * 1024   # 64 MiB: far beyond any scenario or data set a workbook can hold


def read_text(path):
    """The text of the regular file `path` (a leading UTF-8 byte-order mark dropped)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path} ({getattr(exc, 'strerror', None) or exc})") from None
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise ValueError(f"{path} is not a regular file")
    with os.fdopen(descriptor, "rb") as handle:
        data = handle.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise ValueError(f"{path} is larger than the {MAX_BYTES // 2**20} MiB a tracer input file may have")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ValueError(f"{path} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line})") from None


def read_csv(path):
    """The rows of the CSV file `path` (see read_text); a field longer than csv.field_size_limit()
    characters is refused with its line number."""
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    try:
        return list(reader)
    except csv.Error as exc:
        raise ValueError(f"{path} line {reader.line_num}: {exc}") from None
