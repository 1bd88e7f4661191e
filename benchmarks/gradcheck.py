"""Benchmark: gradcheck of EVERY parameter of the wide nets (wide-784-32-10: 25,450 parameters;
digits-64-32-10: 2,410), at step 0 and at the CLI's default steps (first, middle, last): the
gradients checked, those skipped (a kink at u = 0) or unresolved, the largest relative error, the
time and the peak RSS. With --reference, also step 0 by the reference path (a full
engine.forward_backward pass per E(θ ± h), the evaluation before the stacked one; about a minute
on wide-784-32-10).

Each measurement runs in a fresh subprocess that reports its own peak RSS (getrusage).

    python benchmarks/gradcheck.py [--reference] [--template NAME]...
"""
import argparse
from pathlib import Path
import resource
import sys
import time

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))   # this checkout's tracer, not an installed one
from benchmarks import fresh  # noqa: E402
TEMPLATES = ("wide-784-32-10", "digits-64-32-10")


def _measure(name, steps, reference):
    """Run the template, gradcheck every parameter at `steps` (None: the CLI's default steps)."""
    import tracer
    from tracer.explain import gradcheck
    from tracer.training import scenario
    trace = tracer.run(scenario.load(name))      # in the sum order of its workbook's layout, as `tracer gradcheck`
    chosen = steps or sorted({0, trace.steps // 2, trace.steps - 1})
    start = time.perf_counter()
    report = gradcheck.check(trace, chosen, reference=reference)
    seconds = time.perf_counter() - start
    worst = report.worst
    return {"sums": trace.sum_order, "steps": chosen, "checked": len(report.checks), "skipped": len(report.skipped),
            "unresolved": len(report.unresolved), "worst": worst.error, "worst_name": f"{worst.name} at step {worst.step}",
            "seconds": seconds, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", action="store_true", help="also time step 0 by the reference path (slow)")
    parser.add_argument("--template", action="append", choices=TEMPLATES, help="only these templates")
    args = parser.parse_args()
    runs = [("stacked", [0], False), ("stacked", None, False)] + ([("reference", [0], True)] if args.reference else [])
    for name in args.template or TEMPLATES:
        for label, steps, reference in runs:
            m = fresh.measure("gradcheck", "_measure", name, steps, reference)
            if label == "stacked" and steps:
                print(f"{name} (sums {m['sums']})")
            print(f"  {label:9} step(s) {', '.join(map(str, m['steps'])):9} {m['checked']:6,} gradients checked, "
                  f"{m['skipped']} skipped (kink), {m['unresolved']} unresolved; largest relative error {m['worst']:.3e} "
                  f"({m['worst_name']}); {m['seconds']:.2f} s; peak RSS {m['rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
