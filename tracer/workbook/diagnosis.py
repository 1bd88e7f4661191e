"""The Diagnosis sheet: per step, each layer's gradient norm, its flag and its count of exact-zero
slopes, all live formulas (thresholds are named cells on Settings), and the diagnosis in sentences.

The formulas use forms that LibreOffice and Gnumeric evaluate alike: functions such as ABS or
ISERROR over a range inside SUMPRODUCT give #VALUE! (or a single value) in Gnumeric, so an error in
a range is found as COUNT(range) < COLUMNS(range) (COUNT skips error cells) and |x| < θ is written
as (x < θ)·(x > −θ), which still propagates an error cell into the count."""
import numpy as np
from openpyxl.utils import get_column_letter as _letter

from ..diagnose import layer_flag


class DiagnosisLayout:
    title = "Diagnosis"
    header_rows = 1

    def __init__(self, trace, trace_layout, steps_layout, findings):
        self.trace, self.layout, self.steps = trace, trace_layout, steps_layout
        self.layers = trace.layers
        self.findings = findings
        self.slope_ranges = []
        for l in range(1, self.layers + 1):
            units = trace.scenario.widths[l]
            self.slope_ranges.append((trace_layout.cell(("slope", l, 0)), trace_layout.cell(("slope", l, units - 1))))

    def headers(self):
        L = self.layers
        heads = [("step", "training step t", 7)]
        heads += [(f"‖∇⁽{l}⁾‖", "gradient norm of the layer (Steps sheet)", 12) for l in range(1, L + 1)]
        heads += [(f"flag⁽{l}⁾", "non-finite if a gradient entry is an error; else vanishing below threshold_vanishing, "
                   "exploding above threshold_exploding (Settings)", 12) for l in range(1, L + 1)]
        heads += [(f"saturated⁽{l}⁾", "how many slopes of the layer are below threshold_saturated in magnitude "
                   "(exact zeros are orange on the Trace sheet)", 12) for l in range(1, L + 1)]
        heads += [("findings", "the diagnosis of the run, in sentences (tracer diagnose)", 120)]
        return heads

    def rows(self):
        L = self.layers
        for step in range(self.trace.steps):
            number = step + 2
            total = self.layout.total_row(step)
            first = total - len(self.trace.samples(step))
            norms = [f"=Steps!{_letter(l + 2)}{number}" for l in range(1, L + 1)]
            flags = []
            for l in range(1, L + 1):
                norm = f"{_letter(l + 1)}{number}"
                a, b = self.steps.gradient_range(l)
                gradients = f"Trace!{a}{total}:{b}{total}"
                flags.append(
                    f'=IF(COUNT({gradients})<COLUMNS({gradients}),"non-finite",'
                    f'IF(ISERROR({norm}),"exploding",IF({norm}<threshold_vanishing,"vanishing",'
                    f'IF({norm}>threshold_exploding,"exploding",""))))'
                )
            zeros = [f"=SUMPRODUCT((Trace!{a}{first}:{b}{total - 1}<threshold_saturated)"
                     f"*(Trace!{a}{first}:{b}{total - 1}>-threshold_saturated))"
                     for a, b in self.slope_ranges]
            finding = self.findings[step] if step < len(self.findings) else None
            yield [self.trace.first_step + step] + norms + flags + zeros + [finding]

    def expected(self):
        L, th = self.layers, self.trace.scenario.thresholds
        norms = [self.trace.gradient_norm(l) for l in range(1, L + 1)]
        for step in range(self.trace.steps):
            n = len(self.trace.samples(step))
            values = {}
            for l in range(1, L + 1):
                finite = bool(np.isfinite(self.trace.grad_W[l - 1][step]).all() and np.isfinite(self.trace.grad_b[l - 1][step]).all())
                values[l] = norms[l - 1][step]
                values[L + l] = layer_flag(norms[l - 1][step], finite, th)
                slopes = self.trace.slope[l - 1][step, :n]
                values[2 * L + l] = (float((np.abs(slopes) < th["saturated"]).sum()) if np.isfinite(slopes).all()
                                     else np.nan)
            yield step, values
