"""The Diagnosis sheet: per step, each layer's gradient norm, its flag and its count of exact-zero
slopes, then the stall series (plateau, oscillation, gradient relative to depth, update-to-weight
ratio, saturated share and units at their floor; see diagnose.StallSeries), all live formulas
(thresholds are named cells on Settings), and the diagnosis in sentences.

The formulas use forms that LibreOffice and Gnumeric evaluate alike: functions such as ABS or
ISERROR over a range inside SUMPRODUCT give #VALUE! (or a single value) in Gnumeric, so an error in
a range is found as COUNT(range) < COLUMNS(range) (COUNT skips error cells) and |x| < θ is written
as (x < θ)·(x > −θ), which still propagates an error cell into the count."""
import numpy as np
from openpyxl.utils import get_column_letter as _letter

from tracer.maths import activations
from tracer import layers
from tracer.explain.diagnose import gradients_finite, layer_flag, loss_minimum, stall_series, unit_values
from tracer.maths.notation import layer as _layer


class DiagnosisLayout:
    title = "Diagnosis"
    header_rows = 1

    def __init__(self, trace, trace_layout, steps_layout, findings):
        self.trace, self.layout, self.steps = trace, trace_layout, steps_layout
        self.layers = trace.layers
        self.findings = findings
        self.slope_ranges = []   # None: a layer through time (its slopes per time step; the count is left blank)
        for l in range(1, self.layers + 1):
            units = trace.scenario.widths[l]
            self.slope_ranges.append(None if trace_layout.through_time(l) else
                                     (trace_layout.cell(("slope", l, 0)), trace_layout.cell(("slope", l, units - 1))))

    def headers(self):
        L = self.layers
        heads = [("step", "training step t", 7)]
        heads += [(f"‖∇{_layer(l)}‖", "gradient norm of the layer (Steps sheet)", 12) for l in range(1, L + 1)]
        heads += [(f"flag{_layer(l)}", "non-finite if a gradient entry is an error; else vanishing below threshold_vanishing, "
                   "exploding above threshold_exploding (Settings)", 12) for l in range(1, L + 1)]
        heads += [(f"saturated{_layer(l)}", "how many slopes of the layer are below threshold_saturated in magnitude "
                   "(exact zeros are orange on the Trace sheet)", 12) for l in range(1, L + 1)]
        heads += self._stall_headers()
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
                gradients = self.layout.parameter_range(l, step, "grad_")
                flags.append(
                    f'=IF(COUNT({gradients})<{self.layout.range_size(gradients)},"non-finite",'
                    f'IF(ISERROR({norm}),"exploding",IF({norm}<threshold_vanishing,"vanishing",'
                    f'IF({norm}>threshold_exploding,"exploding",""))))'
                )
            zeros = [f"=SUMPRODUCT((Trace!{span[0]}{first}:{span[1]}{total - 1}<threshold_saturated)"
                     f"*(Trace!{span[0]}{first}:{span[1]}{total - 1}>-threshold_saturated))" if span else None
                     for span in self.slope_ranges]
            finding = self.findings[step] if step < len(self.findings) else None
            yield [self.trace.first_step + step] + norms + flags + zeros + self._stall_cells(step) + [finding]

    def expected(self):
        L, th = self.layers, self.trace.scenario.thresholds
        norms = [self.trace.gradient_norm(l) for l in range(1, L + 1)]
        series = stall_series(self.trace, np.stack(norms, axis=1))
        for step in range(self.trace.steps):
            n = len(self.trace.samples(step))
            values = {}
            for l in range(1, L + 1):
                finite = gradients_finite(self.trace, l, step)
                values[l] = norms[l - 1][step]
                values[L + l] = layer_flag(norms[l - 1][step], finite, th)
                if self.slope_ranges[l - 1] is None:
                    continue
                slopes = self.trace.slope[l - 1][step, :n]
                values[2 * L + l] = (float((np.abs(slopes) < th["saturated"]).sum()) if np.isfinite(slopes).all()
                                     else np.nan)
            values.update(self._stall_expected(series, step))
            yield step, values

    # ------------------------------------------------------------ stall series (diagnose.StallSeries)

    def _stall_columns(self):
        """(key, header, comment) of the stall columns, in sheet order."""
        L, s = self.layers, self.trace.scenario
        columns = [("rel", "|ΔE|/|E|", "relative change of the loss from the previous step"),
                   ("quiet", "still steps", "steps in a row with |ΔE|/|E| < threshold_plateau"),
                   ("plateau", "plateau", "plateau: still steps ≥ threshold_plateau_window while E − E_min > "
                                          "threshold_plateau_far·(E₀ − E_min)"),
                   ("flips", "ΔE sign flips", "steps in a row where ΔE changed sign"),
                   ("oscillating", "oscillating", "sign flips ≥ threshold_oscillation while |ΔE|/|E| > threshold_plateau")]
        columns += [(("depth", l), f"‖∇{_layer(l)}‖/‖∇{_layer(L)}‖", "gradient norm relative to the output layer's")
                    for l in range(1, L)]
        if L > 1:
            columns.append(("deep", "below depth", "layers whose ratio is below threshold_depth_ratio (vanishing relative to depth)"))
        columns += [(("update", l), f"|Δθ{_layer(l)}|/|θ{_layer(l)}|", "update-to-weight ratio of the layer (≈1e-3 healthy)")
                    for l in range(1, L + 1)]
        columns.append(("update_flag", "updates", "unstable if a ratio exceeds threshold_update_unstable, else frozen if "
                                                  "one is below threshold_update_frozen"))
        for l, layer in enumerate(s.layers, start=1):
            act = activations.get(layer.activation)
            if act.saturates_at and not self.layout.through_time(l):
                levels = ", ".join(f"{v:g}" for v in act.saturates_at)
                columns.append((("saturation", l), f"saturated{_layer(l)} share",
                                f"share of the step's unit-samples with {act.symbol} within threshold_saturation of {levels}"))
        for l, layer in enumerate(s.layers, start=1):
            if activations.get(layer.activation).can_die and not self.layout.through_time(l):
                columns.append((("floor", l), f"at floor{_layer(l)}", "units with u ≤ 0 for every sample of the step"))
        return columns

    def _stall_headers(self):
        return [(header, comment, 12) for _, header, comment in self._stall_columns()]

    def _stall_letters(self):
        start = 2 + 3 * self.layers   # 1-based column of the first stall column
        return {key: _letter(start + k) for k, (key, _, _) in enumerate(self._stall_columns())}

    def _stall_cells(self, step):
        """The stall columns' formulas in the row of `step` (None where a rule needs earlier steps)."""
        L, s = self.layers, self.trace.scenario
        c = self._stall_letters()
        r = step + 2
        E, E_prev, E_before = f"Steps!B{r}", f"Steps!B{r - 1}", f"Steps!B{r - 2}"
        minimum, first_minimum = float(self.minimum[step]), float(self.minimum[0])
        cells = {}
        if step == 0:
            cells.update(rel=None, quiet=0, plateau=None)
        else:
            cells["rel"] = f"=ABS({E}-{E_prev})/ABS({E_prev})"
            cells["quiet"] = f"=IF({c['rel']}{r}<threshold_plateau,{c['quiet']}{r - 1}+1,0)"
            cells["plateau"] = (f'=IF(AND({c["quiet"]}{r}>=threshold_plateau_window,{E}-{minimum!r}>threshold_plateau_far*'
                                f'(Steps!B$2-{first_minimum!r})),"plateau","")')
        if step < 2:
            cells.update(flips=0, oscillating=None)
        else:
            cells["flips"] = f"=IF(SIGN({E}-{E_prev})*SIGN({E_prev}-{E_before})<0,{c['flips']}{r - 1}+1,0)"
            cells["oscillating"] = (f'=IF(AND({c["flips"]}{r}>=threshold_oscillation,{c["rel"]}{r}>threshold_plateau),'
                                    f'"oscillating","")')
        for l in range(1, L):
            cells[("depth", l)] = f"={_letter(l + 1)}{r}/{_letter(L + 1)}{r}"
        if L > 1:
            cells["deep"] = f'=COUNTIF({c[("depth", 1)]}{r}:{c[("depth", L - 1)]}{r},"<"&threshold_depth_ratio)'
        total = self.layout.total_row(step)
        first, last = total - len(self.trace.samples(step)), total - 1
        for l in range(1, L + 1):
            up = self.layout.parameter_range(l, step, "update_", trained_only=True)
            theta = self.layout.parameter_range(l, step)
            cells[("update", l)] = f"=SQRT(SUMSQ({up}))/SQRT(SUMSQ({theta}))"
        ratios = f"{c[('update', 1)]}{r}:{c[('update', L)]}{r}"
        cells["update_flag"] = (f'=IF(COUNTIF({ratios},">"&threshold_update_unstable)>0,"unstable",'
                                f'IF(COUNTIF({ratios},"<"&threshold_update_frozen)>0,"frozen",""))')
        n = len(self.trace.samples(step))
        for l, layer in enumerate(s.layers, start=1):
            act = activations.get(layer.activation)
            symbol = layers.of(layer).activated(layer)   # the column of f(u)
            if self.layout.through_time(l):
                continue   # no saturation / floor columns for a layer through time
            if act.saturates_at:
                span = (f"Trace!{self.layout.cell((symbol, l, 0))}{first}:"
                        f"{self.layout.cell((symbol, l, s.widths[l] - 1))}{last}")
                terms = "+".join(f'COUNTIFS({span},">"&({level:g}-threshold_saturation),{span},"<"&({level:g}+threshold_saturation))'
                                 for level in act.saturates_at)
                cells[("saturation", l)] = f"=({terms})/{n * s.widths[l]}"
            if act.can_die and self._fixed_length:
                # one formula whatever the units: per unit (column) the count of u ≤ 0 down the samples by MMULT
                # (a row of ones times the 0/1 block; an error cell of u makes the count an error: see expected)
                span = f"Trace!{self.layout.cell(('u', l, 0))}{first}:{self.layout.cell(('u', l, s.widths[l] - 1))}{last}"
                cells[("floor", l)] = f"=SUMPRODUCT(--(MMULT(TRANSPOSE(ROW({span})^0),--({span}<=0))={n}))"
            elif act.can_die:
                units = "+".join(f'(COUNTIF(Trace!{self.layout.cell(("u", l, j))}{first}:{self.layout.cell(("u", l, j))}{last},'
                                 f'"<=0")={n})' for j in range(s.widths[l]))
                cells[("floor", l)] = f"=0+{units}"
        return [cells[key] for key, _, _ in self._stall_columns()]

    @property
    def minimum(self):
        if not hasattr(self, "_minimum"):
            self._minimum = loss_minimum(self.trace)
        return self._minimum

    @property
    def _fixed_length(self):
        """The layout wants counts over units as one range formula (the matrix layout) rather than a term per unit."""
        return getattr(self.layout, "fixed_length_formulas", False)

    def _rel_operands(self, step):
        """The magnitude |ΔE|/|E| is relative to: |E_t/E_{t−1}|; where the Trace sheet's E need not carry the
        engine's bits (the matrix layout adds its sums in another order: `loss_scale`, the magnitude that
        flows into E_t), also what that uncertainty of E_t and E_{t−1} is relative to E_{t−1}."""
        E = self.trace.loss
        operands = abs(float(E[step] / E[step - 1]))
        loss_scale = getattr(self.layout, "loss_scale", None)
        if loss_scale is not None:
            if not hasattr(self, "_loss_scales"):
                self._loss_scales = {}
            for t in (step - 1, step):
                if t not in self._loss_scales:
                    self._loss_scales[t] = loss_scale(self.trace, t)
            operands = max(operands, (self._loss_scales[step] + self._loss_scales[step - 1] * operands) / abs(float(E[step - 1])))
        return operands

    def _stall_expected(self, series, step):
        """Engine values of the stall formula cells of `step`: {column index: value}."""
        L = self.layers
        start = 1 + 3 * L   # 0-based index of the first stall column
        # |E_t − E_{t−1}|/|E_{t−1}| cancels: its operands are of the size E_t/E_{t−1} (see _rel_operands)
        rel = (series.rel[step], self._rel_operands(step)) if step and np.isfinite(series.rel[step]) else series.rel[step]
        values = {"rel": rel, "quiet": series.quiet[step], "plateau": series.plateau[step],
                  "flips": series.flips[step], "oscillating": series.oscillating[step], "deep": series.deep[step],
                  "update_flag": series.update_flag[step]}
        for l in range(1, L):
            values[("depth", l)] = series.depth[step, l - 1]
        for l in range(1, L + 1):
            values[("update", l)] = series.update[step, l - 1]
        for l, fractions in series.saturation.items():
            values[("saturation", l)] = fractions[step]
        for l, counts in series.floor.items():
            values[("floor", l)] = counts[step]
            if self._fixed_length and not np.isfinite(unit_values(self.trace, "u", l, step, len(self.trace.samples(step)))).all():
                values[("floor", l)] = np.nan   # the one MMULT formula is an error where a u of the layer is one
        skipped = {"rel", "quiet", "plateau"} if step == 0 else set()
        skipped |= {"flips", "oscillating"} if step < 2 else set()
        return {start + k: values[key] for k, (key, _, _) in enumerate(self._stall_columns())
                if key not in skipped}
