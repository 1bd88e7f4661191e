"""The Steps sheet: one row per step with the loss, each layer's gradient norm and log10|w|
of the first weight of every layer, all formulas on the Trace sheet's Σ rows. Where a value is
not finite the cell is #N/A (IFERROR(…,NA())), which the charts draw as a gap, not as 0."""
import numpy as np

from tracer.training.trace import param_name
from tracer.maths import notation


class StepsLayout:
    """Table-sheet protocol (shared by Steps, Diagnosis, ChainRule): title, headers(), rows(),
    expected() -> per row (block key, {column index: engine value}), `header_rows` before the data."""

    title = "Steps"
    header_rows = 1
    error_value = "#N/A"   # the cells' value where the engine is not finite

    def __init__(self, trace, trace_layout):
        self.trace, self.layout = trace, trace_layout
        self.first_step = trace.first_step
        self.layers = trace.layers
        self._gradient_ranges = [trace_layout.parameter_span(l, "grad_") for l in range(1, self.layers + 1)]

    def headers(self):
        """(text, comment, width) per column."""
        heads = [("step", "training step t", 7), ("E", "loss of the step (Trace Σ row)", 14)]
        heads += [(f"‖∇{notation.layer(l)}‖", f"L2 norm of the batch gradient of every W{l} and b{l} entry", 14) for l in range(1, self.layers + 1)]
        names = [param_name(self.trace.scenario, "W", l, (0, 0)) for l in range(1, self.layers + 1)]
        heads += [(f"log10|{name}|", f"log10 of |{name}| used at this step", 16) for name in names]
        return heads

    def rows(self):
        loss = self.layout.cell(("loss",))
        for step in range(self.trace.steps):
            total = self.layout.total_row(step)
            row = [f"Trace!{loss}{total}"]
            row += [f"SQRT(SUMSQ(Trace!{a}{total}:{b}{total}))" for a, b in self._gradient_ranges]
            row += [f"LOG10(ABS(Trace!{self.layout.cell(('W', l, (0, 0)))}{total}))" for l in range(1, self.layers + 1)]
            yield [self.first_step + step] + [f"=IFERROR({body},NA())" for body in row]

    def expected(self):
        """Engine values of the formula cells, row by row: (step, {column index: value})."""
        norms = [self.trace.gradient_norm(l) for l in range(1, self.layers + 1)]
        with np.errstate(all="ignore"):
            logs = [np.log10(np.abs(self.trace.W[l - 1][:-1, 0, 0])) for l in range(1, self.layers + 1)]
        for step in range(self.trace.steps):
            values = [self.trace.loss[step]] + [n[step] for n in norms] + [g[step] for g in logs]
            yield step, {index: value for index, value in enumerate(values, start=1)}
