"""Benchmark: the digits-64-32-10 template end to end, as `tracer run` and `tracer verify` do it.

Prints the engine's time, the workbook's write time and size, LibreOffice's recomputation, the
comparison of every formula cell, the loss from first to last step, and this process's peak RSS.
The template is too large for the every-template tests (tests/conftest.py LARGE_TEMPLATES): this
is where its full workbook is timed; tests/test_datasets.py verifies its first steps.

    python benchmarks/digits.py [--steps N]
"""
import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tracer.training import engine, scenario  # noqa: E402
from tracer.recalc import libreoffice, verify
from tracer.workbook import writer  # noqa: E402

TEMPLATE = "digits-64-32-10"


def _timed(call):
    start = time.perf_counter()
    result = call()
    return result, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="steps (default: the template's)")
    steps = parser.parse_args().steps
    trace, run_s = _timed(lambda: engine.run(scenario.load(TEMPLATE, steps=steps)))
    with tempfile.TemporaryDirectory(prefix="bench-digits-") as folder:
        path = Path(folder) / f"{TEMPLATE}.xlsx"
        layout, write_s = _timed(lambda: writer.write(trace, path))
        recomputed, office_s = _timed(lambda: libreoffice.convert(path, "xlsx", Path(folder) / "out"))
        report, compare_s = _timed(lambda: verify.compare(trace, layout, recomputed))
        size = path.stat().st_size
    print(f"{TEMPLATE}: {trace.steps} steps, batch {trace.scenario.batch_size}, {len(layout.columns):,} Trace columns, "
          f"{layout.last_row:,} rows; loss {trace.loss[0]:.4f} -> {trace.loss[-1]:.4f}")
    print(f"engine {run_s:.2f} s, write {write_s:.1f} s ({size / 2**20:.1f} MiB), LibreOffice {office_s:.1f} s, "
          f"compare {compare_s:.1f} s: verify {write_s + office_s + compare_s:.1f} s; "
          f"{report.cells:,} formula cells, ok={report.ok}, largest relative difference {report.worst:.2e}")
    print(f"peak RSS of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB "
          "(LibreOffice's not included)")


if __name__ == "__main__":
    main()
