"""Use tracer from Python: build a scenario in code, run it, read the trace, explain a gradient,
diagnose the run and export a workbook of live formulas.

    python examples/api_tour.py [output-folder]
"""
import sys
from pathlib import Path

from tracer import chain, diagnose, engine, scenario
from tracer.workbook import writer

# A 2-3-1 network with Leaky ReLU hidden units, described as the TOML schema's dict.
raw = {
    "name": "api-tour",
    "seed": 0,
    "steps": 5,
    "data": {"inputs": [[0.5, 1.0], [1.5, -0.5], [-1.0, 2.0]], "targets": [[1.0], [0.0], [0.5]]},
    "layers": [
        {"units": 3, "activation": "leaky_relu", "slope": 0.1, "init": "he_normal"},
        {"units": 1, "activation": "identity", "init": "xavier_uniform"},
    ],
    "loss": {"name": "half_sse", "reduction": "mean"},
    "optimizer": {"name": "sgd", "lr": 0.1},
}
run = scenario.from_dict(raw, source="api_tour.py")
trace = engine.run(run)

# Every scalar is in the trace: here the batch gradient of W1[0,0] and the loss per step.
for step in range(trace.steps):
    print(f"step {step}: E = {trace.loss[step]:.6f}, ∂E/∂W1[0,0] = {trace.grad_W[0][step, 0, 0]:+.6f}")

# The chain rule behind one per-sample gradient, with the numbers of the trace.
print(chain.render(chain.explain(trace, "W1[0,0]", step=0)))

# The diagnosis in sentences.
for sentence in diagnose.diagnose(trace).findings:
    print("-", sentence)

# A workbook whose cells recompute the run; a built-in template works the same way.
folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".")
writer.write(trace, folder / "api-tour.xlsx", force=True)
trace.write_csv(folder / "api-tour.csv")
print("wrote", folder / "api-tour.xlsx", "and", folder / "api-tour.csv")
