"""The ChainRule sheet: for the first weight of every layer (and any parameter asked for), per
step and sample, the factors ② input · ④ error from above · ⑤ local slope as live formulas on
the Trace cells, their product, the Trace's gradient and whether they agree (to 1e-9)."""
import numpy as np

from tracer.maths import losses
from tracer.explain.chain import error_from_above, parse_parameter
from tracer.training.trace import param_name

MAX_STEPS = 200   # the sheet covers the first steps only; the identity is the same at every step


class ChainRuleLayout:
    title = "ChainRule"
    header_rows = 1
    row_floor = True   # the factors of a row share one cancellation floor (they multiply together)

    def __init__(self, trace, trace_layout, parameters=()):
        self.trace, self.layout = trace, trace_layout
        s = trace.scenario
        firsts = [("W", l, (0, 0)) for l in range(1, len(s.layers) + 1)]   # W1[0,0] (gamma1[0]) of every layer
        self.parameters = []
        for parsed in firsts + [parse_parameter(text, s.widths, s) for text in parameters]:
            if trace_layout.through_time(parsed[1]):
                continue   # a sum over time steps (tracer chain shows it), not one product of three factors
            if parsed not in self.parameters:
                self.parameters.append(parsed)
        self.steps = min(trace.steps, MAX_STEPS)
        self.fused = not losses.LOSSES[s.loss].reads_output_slope   # ⑤ blank: the loss owns δ⁽ᴸ⁾

    def headers(self):
        return [
            ("θ", "the parameter whose per-sample gradient is factored", 11),
            ("step", "training step t", 7), ("sample", "data row", 8),
            ("② input", "a⁽ˡ⁻¹⁾ᵢ (xᵢ for layer 1; 1 for a bias)", 14),
            ("④ error from above", "Σₖ W_{l+1}[j,k]·δₖ⁽ˡ⁺¹⁾; for the output ∂E/∂a (or δ = a − t for bce, a·Σt − t for softmax_ce)", 16),
            ("⑤ local slope", "f'(u⁽ˡ⁾ⱼ) (blank where the loss is fused with the output: δ = ∂E/∂u)", 14),
            ("②·④·⑤", "the chain-rule product", 14),
            ("∂E/∂θ (Trace)", "the per-sample gradient cell of the Trace sheet", 14),
            ("agree", "✓ when the product equals the Trace's gradient to 1e-9", 7),
        ]

    def _cells(self, which, layer, index):
        """Formula templates (with {r} sample row, {p} Σ row) for ②, ④, ⑤ and the gradient: ② the
        factor the layer's kind multiplies δ by, ④ the e column or the error the kind above passes down."""
        L, cell = len(self.trace.scenario.layers), self.layout.cell
        j = index[-1]
        if which == "W":
            first = f"=Trace!{cell(self._factor(layer, index))}{{r}}"
            gradient = f"=Trace!{cell(('grad_W', layer, index))}{{r}}"
        else:
            first, gradient = 1, f"=Trace!{cell(('grad_b', layer, index))}{{r}}"
        slope = f"=Trace!{cell(('slope', layer, j))}{{r}}"
        if layer == L:
            error, slope = self._output_error(j, slope)
        elif self.layout.has_error_columns(layer):
            error = f"=Trace!{cell(('e', layer, j))}{{r}}"
        else:
            error = "=" + self.layout.formula(self.layout.error_from_above(layer, j)[0], "Trace!")
        return first, error, slope, gradient

    def _factor(self, layer, index):
        """The key of factor ② of ∂E/∂W⁽ˡ⁾[i,j], from the layer's kind."""
        scenario_layer, kind, cells = self.layout.layer_cells(layer)
        return kind.excel_factor(scenario_layer, cells, *index)[0]

    def _output_error(self, j, slope):
        """④ and ⑤ of the output layer: ∂E/∂a and f'(u), or the loss's fused δ and no slope."""
        cell, L, widths = self.layout.cell, len(self.trace.scenario.layers), self.trace.scenario.widths
        if not self.fused:
            return f"=Trace!{cell(('dE_da', L, j))}{{r}}", slope
        outputs = [f"Trace!{cell(('a', L, k))}{{r}}" for k in range(widths[-1])]
        targets = [f"Trace!{cell(('t', 0, k))}{{r}}" for k in range(widths[-1])]
        return "=" + losses.LOSSES[self.trace.scenario.loss].excel_output_delta(outputs, targets, j, [], None), None

    def rows(self):
        row_number = self.header_rows + 1
        for which, layer, index in self.parameters:
            name = param_name(self.trace.scenario, which, layer, index)
            first, error, slope, gradient = self._cells(which, layer, index)
            for step in range(self.steps):
                total = self.layout.total_row(step)
                for slot, sample in enumerate(self.trace.samples(step)):
                    number = total - len(self.trace.samples(step)) + slot
                    places = {"r": number, "p": total}
                    product = f"=D{row_number}*E{row_number}" + (f"*F{row_number}" if slope else "")
                    check = (f'=IF(ABS(G{row_number}-H{row_number})<=1E-9*MAX(ABS(G{row_number}),ABS(H{row_number})),"✓","✗")')
                    yield [name, self.trace.first_step + step, int(sample),
                           first if not isinstance(first, str) else first.format_map(places),
                           error.format_map(places), slope.format_map(places) if slope else None,
                           product, gradient.format_map(places), check]
                    row_number += 1

    def expected(self):
        t, s = self.trace, self.trace.scenario
        L = len(s.layers)
        for which, layer, index in self.parameters:
            j = index[-1]
            factor = self._factor(layer, index) if which == "W" else None
            for step in range(self.steps):
                for slot, sample in enumerate(t.samples(step)):
                    values = {}
                    if which == "W":
                        first = float(t.values(factor, "sample", np.array([step]), np.array([slot]), np.array([sample]))[0])
                        values[3] = first
                        gradient = t.grad_W_sample[layer - 1][(step, slot) + index]
                    else:
                        first, gradient = 1.0, t.grad_b_sample[layer - 1][step, slot, j]
                    if layer == L and self.fused:
                        fused = losses.LOSSES[s.loss].output_delta(t.a[L - 1][step, slot][None], s.targets[[sample]], None)
                        error, slope = fused[0, j], None
                    elif layer == L:
                        error, slope = t.output_error[step, slot, j], t.slope[layer - 1][step, slot, j]
                    else:
                        error, slope = error_from_above(t, step, slot, layer, j), t.slope[layer - 1][step, slot, j]
                    with np.errstate(all="ignore"):
                        product = first * error if slope is None else first * error * slope
                    values[4] = error
                    if slope is not None:
                        values[5] = slope
                    values[6], values[7] = product, gradient
                    finite = np.isfinite(product) and np.isfinite(gradient)
                    values[8] = ("✓" if abs(product - gradient) <= 1e-9 * max(abs(product), abs(gradient)) else "✗") if finite else np.nan
                    yield (which, layer, index, step), values
