"""Benchmark: where `tracer verify` spends its time, and the CSV export against the engine.

For xor runs of about 10k, 100k and 1M formula cells it times each part of verify — engine,
writing the workbook, LibreOffice's recomputation, and the comparison (reading the recomputed
values, then comparing every formula cell) — and prints the comparison's share of the whole.
Target: comparison <= 20 % of verify. Then the CSV export of a tiny net's long run (millions of
rows) against the engine that produced it.

    python benchmarks/verify.py [--sizes 10000,100000,1000000] [--csv-steps 32000]
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tracer.training import engine, scenario  # noqa: E402
from tracer.recalc import libreoffice, verify, xlsxread
from tracer.workbook import writer  # noqa: E402

STEPS_PER_CELLS = {10_000: 47, 100_000: 632, 1_000_000: 6926}   # xor: formula cells of the workbook


def _timed(call):
    start = time.perf_counter()
    result = call()
    return result, time.perf_counter() - start


def verify_split(steps):
    trace, run_s = _timed(lambda: engine.run(scenario.load("xor", steps=steps)))
    with tempfile.TemporaryDirectory(prefix="bench-verify-") as folder:
        path = Path(folder) / "xor.xlsx"
        layout, write_s = _timed(lambda: writer.write(trace, path))
        recomputed, office_s = _timed(lambda: libreoffice.convert(path, "xlsx", Path(folder) / "out"))
        tables = writer.table_layouts(trace, layout, findings=[])
        _, read_s = _timed(lambda: xlsxread.read_values(recomputed, ["Trace"] + [t.title for t in tables]))
        report, compare_s = _timed(lambda: verify.compare(trace, layout, recomputed))
    assert report.ok, report.summary()
    total = run_s + write_s + office_s + compare_s
    return report.cells, run_s, write_s, office_s, read_s, compare_s, total


def csv_against_engine(steps):
    loaded = scenario.load("xor", steps=steps)
    trace, run_s = _timed(lambda: engine.run(loaded))
    with tempfile.TemporaryDirectory(prefix="bench-csv-") as folder:
        path = Path(folder) / "trace.csv"
        _, csv_s = _timed(lambda: trace.write_csv(path))
        size = os.path.getsize(path)
    rows = sum(len(table["value"]) for table in trace.tables())
    return rows, size, run_s, csv_s


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--csv-steps", type=int, default=32_000)
    args = parser.parse_args()
    print(f"{'cells':>10} {'engine s':>9} {'write s':>8} {'LibreOffice s':>13} {'compare s':>10} "
          f"{'(of it reading)':>15} {'verify s':>9} {'compare share':>13}")
    for size in (int(s) for s in args.sizes.split(",")):
        steps = STEPS_PER_CELLS.get(size, max(1, size // 145))
        cells, run_s, write_s, office_s, read_s, compare_s, total = verify_split(steps)
        print(f"{cells:>10,} {run_s:>9.2f} {write_s:>8.2f} {office_s:>13.2f} {compare_s:>10.2f} {read_s:>15.2f} "
              f"{total:>9.2f} {compare_s / total:>13.1%}", flush=True)
    rows, size, run_s, csv_s = csv_against_engine(args.csv_steps)
    print(f"\nCSV: {rows:,} rows ({size / 1e6:.0f} MB) in {csv_s:.2f} s; the engine took {run_s:.2f} s "
          f"(CSV/engine {csv_s / run_s:.2f})")


if __name__ == "__main__":
    main()
