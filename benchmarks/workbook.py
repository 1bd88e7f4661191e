"""Benchmark: formula cells per second, scenario -> .xlsx on disk, against bare openpyxl.

For runs of about 100k and 1M formula cells it times the tracer end to end (engine + every
sheet of the workbook: cached values, styles, comments, conditional formats, charts, defined
names) and bare openpyxl write-only mode writing the same number of comparable formula cells
(rows of the Trace sheet's width, formulas of the same mean length, each referring to cells
of its row; no cached values). The two alternate, each in a fresh subprocess that reports its
own peak RSS (getrusage), for --pairs pairs; the medians are printed, so that a change of the
machine's load between two measurements moves both. Targets: ratio >= 2, RSS <= 150 MB at 1M.

    python benchmarks/workbook.py [--sizes 100000,1000000] [--pairs 3]
"""
import argparse
import json
from pathlib import Path
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))   # this checkout's tracer, not an installed one


def _tracer(steps, out):
    from tracer.training import engine, scenario
    from tracer.workbook import writer
    start = time.perf_counter()
    trace = engine.run(scenario.load("xor", steps=steps))
    layout = writer.write(trace, out, force=True)
    return {"seconds": time.perf_counter() - start, "width": len(layout.columns)}


def _formula_cells(path):
    """Every formula cell the workbook holds (all sheets) and their mean length in characters,
    read from the sheet parts' XML (counted after timing)."""
    count = characters = 0
    with zipfile.ZipFile(path) as book:
        for name in book.namelist():
            if name.startswith("xl/worksheets/sheet"):
                data = book.read(name)
                formulas = re.findall(rb"<f>([^<]*)</f>", data)
                count += len(formulas)
                characters += sum(len(f) for f in formulas) - 3 * sum(f.count(b"&") for f in formulas)
    return count, characters / max(count, 1)


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
    return {"seconds": time.perf_counter() - start}


def _child(kind, arg, width, length):
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "bench.xlsx"
        result = _tracer(arg, out) if kind == "tracer" else _bare(arg, width, length, out)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # before counting
        result["cells"], result["length"] = _formula_cells(out)
        result["bytes"] = out.stat().st_size
    print(json.dumps(result))


def _measure(kind, arg, width=0, length=0):
    done = subprocess.run([sys.executable, __file__, "--child", kind, str(arg), str(width), str(int(length))],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _machine():
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    import os
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, load {load:.1f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, arg, width, length = args.child
        _child(kind, int(arg), int(width), int(length))
        return
    print(_machine())
    # cells = fixed + per_step·steps beyond the ChainRule sheet's first 200 steps: two probes
    low, high = _measure("tracer", 300), _measure("tracer", 600)
    per_step = (high["cells"] - low["cells"]) / 300
    fixed = low["cells"] - 300 * per_step
    print(f"{'formula cells':>13} {'steps':>6} {'tracer cells/s':>15} {'openpyxl cells/s':>17} {'ratio':>6} "
          f"{'tracer RSS MB':>13} {'openpyxl RSS MB':>15} {'MB on disk':>10}")
    for size in (int(s) for s in args.sizes.split(",")):
        steps = max(1, round((size - fixed) / per_step))
        ratios, ours_rates, bare_rates, ours_rss, bare_rss = [], [], [], [], []
        for _ in range(args.pairs):
            ours = _measure("tracer", steps)
            bare = _measure("bare", ours["cells"], ours["width"], ours["length"])
            ours_rate, bare_rate = ours["cells"] / ours["seconds"], bare["cells"] / bare["seconds"]
            ratios.append(ours_rate / bare_rate)
            ours_rates.append(ours_rate)
            bare_rates.append(bare_rate)
            ours_rss.append(ours["peak_rss_mb"])
            bare_rss.append(bare["peak_rss_mb"])
        print(f"{ours['cells']:>13,} {steps:>6} {statistics.median(ours_rates):>15,.0f} "
              f"{statistics.median(bare_rates):>17,.0f} {statistics.median(ratios):>5.2f}x "
              f"{max(ours_rss):>13.0f} {max(bare_rss):>15.0f} {ours['bytes'] / 1e6:>10.1f}")
        print(f"{'':>13} ratios of the {args.pairs} pairs: {', '.join(f'{r:.2f}' for r in ratios)}")


if __name__ == "__main__":
    main()
