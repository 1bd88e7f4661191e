"""Benchmark: the matrix layout on wide-784-32-10 (784-32-10, Adam, batch 16): write time, verify
time, peak RSS, the cells verified and the largest difference; and the writer's memory as the
steps grow (the sheet is streamed a step at a time: its RSS should not grow with the steps beyond
the engine's trace, which the run keeps whole).

Each measurement runs in a fresh subprocess that reports its own peak RSS (getrusage).

    python benchmarks/matrix.py [--steps 3] [--more 12]
"""
import argparse
from pathlib import Path
import resource
import sys
import tempfile
import time

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))   # this checkout's tracer, not an installed one
from benchmarks import fresh  # noqa: E402
TEMPLATE = "wide-784-32-10"


def _rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _write(steps, out):
    """Engine, then the workbook: seconds of each, the peak RSS after the engine and after the write."""
    from tracer.training import engine, scenario
    from tracer.workbook import writer
    start = time.perf_counter()
    loaded = scenario.load(TEMPLATE, steps=steps)
    trace = engine.run(loaded, sums=writer.sum_order(loaded))   # matmul, as `tracer run` sums for it
    trained, after_engine = time.perf_counter(), _rss_mb()
    layout = writer.write(trace, out, force=True)
    done = time.perf_counter()
    trace_mb = sum(array.nbytes for array in trace.arrays.values()) / 2**20
    return {"layout": layout.name, "engine_s": trained - start, "write_s": done - trained, "rss_engine_mb": after_engine,
            "rss_mb": _rss_mb(), "trace_mb": trace_mb, "rows": layout.last_row, "columns": layout.column_count,
            "bytes": Path(out).stat().st_size}


def _verify(steps, out):
    """Recompute the written workbook with LibreOffice and compare every formula cell."""
    from tracer.training import engine, scenario
    from tracer.recalc import verify
    from tracer.workbook import writer
    loaded = scenario.load(TEMPLATE, steps=steps)
    trace = engine.run(loaded, sums=writer.sum_order(loaded))
    start = time.perf_counter()
    report = verify.verify(trace, out)
    return {"verify_s": time.perf_counter() - start, "cells": report.cells, "worst": report.worst,
            "worst_where": report.worst_where, "ok": report.ok, "rss_mb": _rss_mb()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="steps written and verified (the template's: 3)")
    parser.add_argument("--more", type=int, default=12, help="steps of the second write (memory as the steps grow)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "wide.xlsx"
        written = fresh.measure("matrix", "_write", args.steps, str(out))
        verified = fresh.measure("matrix", "_verify", args.steps, str(out))
        more = fresh.measure("matrix", "_write", args.more, str(Path(folder) / "more.xlsx"))
    print(f"{TEMPLATE}, {args.steps} steps, {written['layout']} layout: {written['rows']:,} rows x {written['columns']:,} "
          f"columns, {written['bytes'] / 2**20:.1f} MB")
    print(f"  engine {written['engine_s']:.2f} s; write {written['write_s']:.2f} s; peak RSS {written['rss_mb']:.0f} MB "
          f"({written['rss_engine_mb']:.0f} MB after the engine, trace {written['trace_mb']:.0f} MB)")
    print(f"  verify (LibreOffice recompute + compare) {verified['verify_s']:.2f} s; {verified['cells']:,} formula cells; "
          f"largest relative difference {verified['worst']:.3e} at {verified['worst_where']}; "
          f"{'OK' if verified['ok'] else 'DISAGREE'}; peak RSS {verified['rss_mb']:.0f} MB")
    grown = more["rss_mb"] - more["rss_engine_mb"], written["rss_mb"] - written["rss_engine_mb"]
    print(f"  {args.more} steps: write {more['write_s']:.2f} s; peak RSS {more['rss_mb']:.0f} MB "
          f"({more['rss_engine_mb']:.0f} MB after the engine, trace {more['trace_mb']:.0f} MB); the writer's own RSS "
          f"growth {grown[1]:.0f} MB at {args.steps} steps, {grown[0]:.0f} MB at {args.more}")


if __name__ == "__main__":
    main()
