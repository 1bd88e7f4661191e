"""What a notebook shows, as a script: each object's short repr, its HTML (the page a notebook
renders, saved as a file here) and the pictures of a run.

    python examples/notebook_tour.py [output-folder]      (pictures need: pip install '.[plot]')

In a notebook, end a cell with the object instead (`trace`, `tracer.diagnose_run(trace)`,
`trace.plot()`, `trace.plot.network(3)`) and it draws itself.
"""
import sys
from pathlib import Path

import tracer

folder = Path(sys.argv[1] if len(sys.argv) > 1 else "notebook-tour")
folder.mkdir(exist_ok=True)

# Short reprs: what a terminal or a cell's last line shows.
trace = tracer.run("xor")                           # a template name, a TOML path or a Scenario
diagnosis = tracer.diagnose_run(trace)
chain = tracer.explain_gradient(trace, "W1[0,0]", step=0)
report = tracer.check_gradients(trace, steps=(0,))
for thing in (trace.scenario, trace, diagnosis, chain, report):
    print(repr(thing))

# The HTML a notebook renders, one page for all of them (MathJax typesets the chain rule).
parts = [thing._repr_html_() for thing in (trace.scenario, trace, diagnosis, chain, report)]
mathjax = '<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js"></script>'
(folder / "xor.html").write_text(f"<!doctype html><meta charset='utf-8'>{mathjax}" + "<hr>".join(parts), encoding="utf-8")
print(f"wrote {folder / 'xor.html'}")

# Pictures: the loss and gradient flow, histograms, the error through time, the network at a step.
deep = tracer.run("deep-sigmoid")
deep.plot().savefig(folder / "deep-sigmoid-flow.png", dpi=110)
explosion = tracer.run("leaky-relu-explosion")
explosion.plot().savefig(folder / "leaky-relu-explosion-flow.png", dpi=110)
explosion.plot.histograms().savefig(folder / "leaky-relu-explosion-histograms.png", dpi=110)
tracer.run("rnn-exploding").plot.through_time().savefig(folder / "rnn-exploding-time.png", dpi=110)
tracer.run("sigmoid-vanishing").plot.network(0).save(folder / "sigmoid-vanishing-network.svg", force=True)
explosion.plot.network(3).save(folder / "leaky-relu-explosion-network.svg", force=True)
for picture in sorted(folder.glob("*.png")) + sorted(folder.glob("*.svg")):
    print(f"wrote {picture}")
