"""Use tracer from Python (a script or a notebook): build a scenario in code, run it, read the
trace as a DataFrame, explain a gradient, diagnose the run, check it against finite differences
and export a workbook of live formulas.

    python examples/api_tour.py [output-folder]
"""
import sys
from pathlib import Path

import tracer

# A 2-3-1 network with Leaky ReLU hidden units, described as the TOML schema's dict
# (tracer.load("xor") loads a built-in template or a TOML file the same way).
scenario = tracer.from_dict({
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
}, source="api_tour.py")
print(scenario)
trace = tracer.run(scenario)
print(trace)

# Every scalar is in the trace: here the batch gradient of W1[0,0] and the loss per step.
for step in range(trace.steps):
    print(f"step {step}: E = {trace.loss[step]:.6f}, ∂E/∂W1[0,0] = {trace.grad_W[0][step, 0, 0]:+.6f}")

# The same numbers as a tidy table (the CSV's columns), if pandas is installed.
try:
    frame = trace.to_frame()
except ImportError as missing:
    print(missing)
else:
    batch = frame[(frame.quantity == "grad_W") & frame["sample"].isna() & (frame.layer == 1)]
    print(batch.pivot(index="step", columns=["row", "col"], values="value"))

# The chain rule behind one per-sample gradient, with the numbers of the trace.
print(tracer.render_explanation(tracer.explain_gradient(trace, "W1[0,0]", step=0)))

# The diagnosis in sentences, and backprop against central finite differences.
for sentence in tracer.diagnose_run(trace).findings:
    print("-", sentence)
print("gradient check, largest relative error:", tracer.check_gradients(trace, steps=(0, 4)).worst.error)

# A workbook whose cells recompute the run, and the trace as CSV.
folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".")
tracer.write_workbook(trace, folder / "api-tour.xlsx", force=True)
trace.write_csv(folder / "api-tour.csv")
print("wrote", folder / "api-tour.xlsx", "and", folder / "api-tour.csv")
# tracer.verify_workbook(trace).ok recomputes the workbook in LibreOffice and compares every cell.
