"""Benchmark: formula cells per second, scenario -> .xlsx on disk, against bare openpyxl.

For runs of about 10k, 100k and 1M formula cells it prints the tracer's end-to-end throughput
(engine + streamed workbook), the throughput of bare openpyxl write-only mode writing the same
number of comparable formula cells (rows of the same width), their ratio, and the peak RSS of
each (every measurement runs in a fresh subprocess). Targets: ratio >= 70 %, RSS <= 250 MB at 1M.

    python benchmarks/workbook.py [--sizes 10000,100000,1000000]
"""
import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

def _tracer(steps, out):
    from tracer import engine, scenario
    from tracer.workbook import writer
    start = time.perf_counter()
    trace = engine.run(scenario.load("xor", steps=steps))
    layout = writer.write(trace, out, force=True)
    elapsed = time.perf_counter() - start
    cells, length = _formula_cells(out)
    return {"cells": cells, "seconds": elapsed, "width": len(layout.columns), "length": length}


def _formula_cells(path):
    """Every formula cell the workbook holds (all sheets) and their mean length (counted after timing)."""
    from openpyxl import load_workbook
    book = load_workbook(path, read_only=True)
    count = characters = 0
    for sheet in book.worksheets:
        for row in sheet.iter_rows(values_only=True):
            for value in row:
                if isinstance(value, str) and value.startswith("="):
                    count += 1
                    characters += len(value)
    book.close()
    return count, characters / count


def _bare(cells, width, length, out):
    """Bare write-only openpyxl: rows of `width` formulas of about `length` characters, each
    referring to cells of its own row (varied like the tracer's, so compression is comparable)."""
    from openpyxl import Workbook
    from openpyxl.utils import get_column_letter
    templates = []
    for column in range(width):
        terms, text = [], ""
        k = 0
        while len(text) < length - 1:
            a = get_column_letter((column + k) % width + 1)
            b = get_column_letter((column + 3 * k + 1) % width + 1)
            terms.append(f"{a}{{r}}*{b}{{r}}")
            text = "+".join(terms).replace("{r}", "1000")
            k += 1
        templates.append("=" + "+".join(terms))
    start = time.perf_counter()
    book = Workbook(write_only=True)
    sheet = book.create_sheet("Trace")
    written, row = 0, 1
    while written < cells:
        n = min(width, cells - written)
        places = {"r": row}
        sheet.append([templates[i].format_map(places) for i in range(n)])
        written += n
        row += 1
    book.save(out)
    return {"cells": written, "seconds": time.perf_counter() - start}


def _child(kind, arg, width, length):
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "bench.xlsx"
        result = _tracer(arg, out) if kind == "tracer" else _bare(arg, width, length, out)
        result["bytes"] = out.stat().st_size
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def _measure(kind, arg, width=0, length=0):
    done = subprocess.run([sys.executable, __file__, "--child", kind, str(arg), str(width), str(int(length))],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, arg, width, length = args.child
        _child(kind, int(arg), int(width), int(length))
        return
    # cells = fixed + per_step·steps beyond the ChainRule sheet's first 200 steps: two probes
    low, high = _measure("tracer", 300), _measure("tracer", 600)
    per_step = (high["cells"] - low["cells"]) / 300
    fixed = low["cells"] - 300 * per_step
    print(f"{'target cells':>12} {'steps':>6} {'tracer cells/s':>15} {'openpyxl cells/s':>17} {'ratio':>6} "
          f"{'tracer RSS MB':>13} {'openpyxl RSS MB':>15}")
    for size in (int(s) for s in args.sizes.split(",")):
        steps = max(1, round((size - fixed) / per_step)) if size > fixed + 200 * per_step else max(1, round(size / (per_step * 1.5)))
        ours = _measure("tracer", steps)
        bare = _measure("bare", ours["cells"], ours["width"], ours["length"])
        ours_rate, bare_rate = ours["cells"] / ours["seconds"], bare["cells"] / bare["seconds"]
        print(f"{ours['cells']:>12,} {steps:>6} {ours_rate:>15,.0f} {bare_rate:>17,.0f} {ours_rate / bare_rate:>6.0%} "
              f"{ours['peak_rss_mb']:>13.0f} {bare['peak_rss_mb']:>15.0f}")


if __name__ == "__main__":
    main()
