"""The matrix layout of the Trace sheet: for nets too wide for the column layout (784-32-10).

The column layout gives every parameter its own column and writes u = Σ a·W term by term; a
784-32-10 net would need 77,315 columns there. This layout stacks the steps down the sheet, each
step a block of rows a reader takes in at once:

  two header rows            group and quantity of each column of the sample rows
  one row per sample         x, t, then per layer u, a; ∂E/∂a, E; per layer (output first) f'(u), δ
  the Σ row                  E of the batch; lr, ‖g‖, clip c where the run has them
  two header rows            the parameter blocks' titles and units
  the parameter rows         per layer, side by side: θ | ∂E/∂θ | Δθ | each optimiser state, each a
                             block of (1 + fan-in) rows × units columns: the bias in the first row,
                             W[i, ·] in row 1 + i
  a blank row

and after the last step the parameters after it. Formulas have a fixed length whatever the
fan-in: u = MMULT(a⁽ˡ⁻¹⁾ row, W column) + b; the error passed down SUMPRODUCT(W row, δ row); the
batch gradient ∂E/∂W[i,j] = SUMPRODUCT(a⁽ˡ⁻¹⁾ᵢ column, δⱼ column) over the step's sample rows (÷ n
for a mean), with no per-sample gradient cells. The per-unit formulas (activation, slope, loss,
δ⁽ᴸ⁾, optimiser, schedule, clipping) are the same definitions' Excel faces as in the column layout,
given cell references, and the Settings sheet's defined names drive them.

Every cell is described by a `Block` (a rectangle of one quantity: its formulas, the engine's
values, and the magnitude of what flows into it), so the writer (formulas with cached values) and
`verify` (the engine's values and the cancellation floors) read one description.
"""
from dataclasses import dataclass
from typing import Callable

import numpy as np
from openpyxl.utils import get_column_letter

from .. import activations, layers, losses, notation, optim, procedures
from ..errors import LimitError
from . import layout as layout_module, steps as steps_module

MAX_ROWS, MAX_COLUMNS, MAX_FORMULA = 1_048_576, layout_module.MAX_COLUMNS, 8_192
SAMPLE_HEADER_ROWS, PARAMETER_HEADER_ROWS, GAP_ROWS = 2, 2, 1


@dataclass
class Block:
    """A rectangle of cells of one quantity in one step: rows row..row+height−1, columns
    column..column+width−1 (0-based column index). `formula(i, j)` -> formula body (None: the
    cell is a constant: the engine's value); `values` (height × width) the engine's values; `scale`
    the largest magnitude flowing into the block's cells (operands, and Σ|terms| of its sums: the
    base of verify's cancellation floor)."""
    quantity: str
    row: int
    column: int
    values: np.ndarray
    formula: Callable | None
    scale: float = 0.0
    header: str = ""
    blank_first_row: bool = False   # a frozen bias: no update or state cells in row 0
    layer: int | None = None        # the layer (from 1) of the quantity; None: the data or the run

    @property
    def height(self):
        return self.values.shape[0]

    @property
    def width(self):
        return self.values.shape[1]


LETTERS = [get_column_letter(index + 1) for index in range(MAX_COLUMNS)]


def _letter(index):
    return LETTERS[index]


def _max(*arrays):
    """The largest finite magnitude among `arrays` (0 when none)."""
    best = 0.0
    with np.errstate(all="ignore"):
        for array in arrays:
            array = np.abs(np.asarray(array, dtype=float))
            finite = array[np.isfinite(array)]
            if finite.size:
                best = max(best, float(finite.max()))
    return best


def _abs_product(a, b):
    """|a| @ |b| with non-finite entries as 0: the Σ|terms| of the dot products a @ b."""
    with np.errstate(all="ignore"):
        a, b = np.abs(np.asarray(a, float)), np.abs(np.asarray(b, float))
        a, b = np.where(np.isfinite(a), a, 0.0), np.where(np.isfinite(b), b, 0.0)
        return a @ b


def unsupported(scenario):
    """(key, problem) of the first layer the matrix layout cannot show, or None."""
    for l, layer in enumerate(scenario.layers):
        kind = layers.of(layer)
        if kind.name != "dense":
            return f"layers[{l}].kind", f"the matrix layout shows dense layers only, not {kind.name}"
        if layer.residual:
            return f"layers[{l}].residual", "the matrix layout does not show residual connections"
    return None


class MatrixLayout:
    """Where every quantity of every step goes in the matrix layout (see the module docstring)."""

    name = "matrix"

    def __init__(self, scenario, sample_ids, first_step=0, names=None):
        self.scenario = scenario
        self.sample_ids = sample_ids
        self.first_step = first_step
        self.names = names or layout_module.settings_names(scenario)
        problem = unsupported(scenario)
        if problem:
            raise LimitError(problem[1], scenario.source, problem[0])
        s = scenario
        self.widths = s.widths
        self.L = len(s.layers)
        self.loss = losses.LOSSES[s.loss]
        self.optimizer = optim.OPTIMIZERS[s.optimizer]
        self.counts = [int((np.asarray(ids) >= 0).sum()) for ids in sample_ids]
        self._columns()
        self._rows()
        self._check()

    # ---------------------------------------------------------------- geometry

    def _columns(self):
        """Column index of every quantity of the sample rows, and of every parameter block."""
        s, widths = self.scenario, self.widths
        at = 2
        self.sample_columns = {}          # (quantity, layer) -> first column; groups in sheet order
        def take(key, width):
            nonlocal at
            self.sample_columns[key] = at
            at += width
        take(("x", 0), widths[0])
        take(("t", 0), widths[-1])
        for l in range(1, self.L + 1):
            take(("u", l), widths[l])
            take(("a", l), widths[l])
        if self.loss.records_output_error:
            take(("dE_da", self.L), widths[-1])
        take(("loss", None), 1)
        for l in range(self.L, 0, -1):
            take(("slope", l), widths[l])
            take(("delta", l), widths[l])
        self.summary = []
        if s.optimizer_params["schedule"] != "constant":
            self.summary.append("lr")
        if s.clip_norm is not None:
            self.summary += ["grad_norm", "clip_factor"]
        for name in self.summary:
            take((name, None), 1)
        self.sample_width = at
        # parameter blocks: per layer θ, ∂E/∂θ, Δθ, the states; one blank column between blocks
        self.blocks = ["theta", "grad", "update"] + list(self.optimizer.state)
        self.parameter_columns = {}
        at = 2
        for l in range(1, self.L + 1):
            for block in self.blocks:
                self.parameter_columns[(block, l)] = at
                at += widths[l] + 1
        self.parameter_width = at - 1
        self.column_count = max(self.sample_width, self.parameter_width)
        self.parameter_rows = max(widths[l - 1] + 1 for l in range(1, self.L + 1))

    def _rows(self):
        """First row of every step's block, and of the final parameters."""
        starts, row = [], 1
        for n in self.counts:
            starts.append(row)
            row += SAMPLE_HEADER_ROWS + n + 1 + PARAMETER_HEADER_ROWS + self.parameter_rows + GAP_ROWS
        self.starts = starts
        self.final_start = row
        self.last_row = row + PARAMETER_HEADER_ROWS + self.parameter_rows - 1

    def first_sample_row(self, step):
        return self.starts[step] + SAMPLE_HEADER_ROWS

    def total_row(self, step):
        """The Σ row of step index `step`."""
        return self.first_sample_row(step) + self.counts[step]

    def parameter_row(self, step):
        """The first parameter row (the biases) of step index `step` (len(steps): the final block)."""
        start = self.final_start if step == len(self.counts) else self.total_row(step) + 1
        return start + PARAMETER_HEADER_ROWS

    def _check(self):
        """Refuse, before anything is written, a layout beyond the sheet's rows, columns or formula length."""
        source = self.scenario.source
        if self.column_count > MAX_COLUMNS:
            raise LimitError(f"the matrix layout would need {self.column_count:,} columns, above the spreadsheet "
                             f"limit of {MAX_COLUMNS} columns: use fewer or narrower layers",
                             source, layout_module.widest_key(self.scenario))
        if self.last_row > MAX_ROWS:
            per_step = (SAMPLE_HEADER_ROWS + max(self.counts) + 1 + PARAMETER_HEADER_ROWS + self.parameter_rows
                        + GAP_ROWS)
            fitting = (MAX_ROWS - PARAMETER_HEADER_ROWS - self.parameter_rows) // per_step
            problem = f"the matrix layout would need {self.last_row:,} rows, above the spreadsheet limit of {MAX_ROWS:,}"
            if fitting < 1:
                raise LimitError(f"{problem}: one step takes {per_step:,.0f} rows; use a smaller batch",
                                 source, "training.batch")
            raise LimitError(f"{problem}: use --steps {fitting} or fewer (steps = {fitting}), "
                             "or export a slice with --window A:B", source, "steps")
        if not self.counts:
            return
        step = len(self.counts) - 1   # the largest row numbers: the longest references
        for block in self.step_blocks(step, None, first=False):
            for i in range(block.height):
                for j in range(block.width):
                    text = block.formula(i, j)
                    if text is not None and len(text) + 1 > MAX_FORMULA:
                        raise LimitError(
                            f"the formula of {block.header} would be longer than the spreadsheet limit of "
                            f"{MAX_FORMULA} characters: use fewer units per layer",
                            source, layout_module.widest_key(self.scenario))
                if block.quantity not in ("a", "loss", "dE_da", "delta", "slope"):
                    break   # a block's formulas have one length up to its row numbers: one row is enough

    # ---------------------------------------------------------------- references

    def _sample_cell(self, quantity, l, j, row):
        return f"{_letter(self.sample_columns[(quantity, l)] + j)}{row}"

    def _sample_range(self, quantity, l, row, width=None):
        """The cells of one sample row's quantity: a row range."""
        first = self.sample_columns[(quantity, l)]
        width = self.widths[l] if width is None else width
        return f"{_letter(first)}{row}:{_letter(first + width - 1)}{row}"

    def _sample_column_range(self, quantity, l, j, step):
        """Unit j of a quantity down the step's sample rows."""
        letter = _letter(self.sample_columns[(quantity, l)] + j)
        first = self.first_sample_row(step)
        return f"{letter}{first}:{letter}{first + self.counts[step] - 1}"

    def _below(self, l):
        return ("x", 0) if l == 1 else ("a", l - 1)

    def _parameter_cell(self, block, l, row, j, step):
        """Cell of block `block` (theta, grad, ...) of layer l: row 0 the bias, 1 + i the W row i."""
        return f"{_letter(self.parameter_columns[(block, l)] + j)}{self.parameter_row(step) + row}"

    def _summary_cell(self, name, step):
        return f"${_letter(self.sample_columns[(name, None)])}${self.total_row(step)}"

    # ---------------------------------------------------------------- blocks of one step

    def step_blocks(self, step, trace, first=None):
        """The Blocks of step index `step` in sheet order (sample rows, Σ row, parameter rows).
        With `trace` None the values are zeros (the formulas alone: the limit check)."""
        if first is None:
            first = step == 0
        n = self.counts[step]
        v = _Values(trace, step, n, self)
        for block in self._sample_blocks(step, n, v):
            yield self._with_layer(block)
        yield from self._total_blocks(step, n, v)
        for block in self._parameter_blocks(step, n, v, first):
            yield self._with_layer(block)

    def _with_layer(self, block):
        """The block with its layer, read from the column it starts at."""
        if block.quantity in self.blocks:
            block.layer = next(l for (name, l), column in self.parameter_columns.items() if column == block.column)
        else:
            block.layer = next(l for (name, l), column in self.sample_columns.items() if column == block.column)
        return block

    def _sample_blocks(self, step, n, v):
        s, widths, L = self.scenario, self.widths, self.L
        row0 = self.first_sample_row(step)
        rows = lambda i: row0 + i   # noqa: E731
        ids = v.ids
        data_rows = [int(sample) + 2 for sample in ids]
        x, t = v.data()
        yield Block("x", row0, self.sample_columns[("x", 0)], x,
                    lambda i, j: f"Data!{layout_module.input_letter(s, j)}{data_rows[i]}", _max(x), "x")
        yield Block("t", row0, self.sample_columns[("t", 0)], t,
                    lambda i, j: f"Data!{layout_module.data_letter(widths[0] + j)}{data_rows[i]}", _max(t), "t")
        below = x
        for l in range(1, L + 1):
            layer = s.layers[l - 1]
            u, a = v.sample("u", l), v.sample("a", l)
            W, b = v.parameter("W", l), v.parameter("b", l)
            terms = _abs_product(below, W) + np.abs(np.where(np.isfinite(b), b, 0.0))
            yield Block("u", row0, self.sample_columns[("u", l)], u, _weighted_sum(self, step, l, rows),
                        max(_max(terms), _max(below, W, b)), f"u{l} (MMULT)")
            act, params = activations.get(layer.activation), self._activation_params(l)
            if act.elementwise:
                formula = (lambda act, l, params: lambda i, j: act.excel_value(
                    self._sample_cell("u", l, j, rows(i)), params))(act, l, params)
            else:
                formula = (lambda act, l, params: lambda i, j: act.excel_value(
                    [self._sample_cell("u", l, k, rows(i)) for k in range(widths[l])], j, params))(act, l, params)
            yield Block("a", row0, self.sample_columns[("a", l)], a, formula, _max(u), f"a{l}")
            below = a
        K, out = widths[-1], below
        targets = lambda i: [self._sample_cell("t", 0, k, rows(i)) for k in range(K)]   # noqa: E731
        outputs = lambda i: [self._sample_cell("a", L, k, rows(i)) for k in range(K)]   # noqa: E731
        if self.loss.records_output_error:
            yield Block("dE_da", row0, self.sample_columns[("dE_da", L)], v.sample("dE_da", L),
                        lambda i, j: self.loss.excel_error(self._sample_cell("a", L, j, rows(i)),
                                                           self._sample_cell("t", 0, j, rows(i)), K),
                        _max(out, t), "∂E/∂a")
        yield Block("loss", row0, self.sample_columns[("loss", None)], v.sample("loss", None),
                    lambda i, j: self.loss.excel_value([self._sample_cell("u", L, k, rows(i)) for k in range(K)],
                                                       outputs(i), targets(i)),
                    _max(v.sample("u", L), out, t), "E")
        for l in range(L, 0, -1):
            layer = s.layers[l - 1]
            act, params = activations.get(layer.activation), self._activation_params(l)
            u, a, slope, delta = v.sample("u", l), v.sample("a", l), v.sample("slope", l), v.sample("delta", l)
            yield Block("slope", row0, self.sample_columns[("slope", l)], slope,
                        (lambda act, l, params: lambda i, j: act.excel_slope(
                            self._sample_cell("u", l, j, rows(i)), self._sample_cell("a", l, j, rows(i)), params))(act, l, params),
                        _max(u, a), f"f'(u{l})")
            if l == L:
                dE = (lambda i: [self._sample_cell("dE_da", L, k, rows(i)) for k in range(K)]) \
                    if self.loss.records_output_error else (lambda i: [])
                formula = lambda i, j: self.loss.excel_output_delta(   # noqa: E731
                    outputs(i), targets(i), j, dE(i), self._sample_cell("slope", L, j, rows(i)))
                scale = _max(out, t, slope, v.sample("dE_da", L) if self.loss.records_output_error else 0)
            else:
                W_above, delta_above = v.parameter("W", l + 1), v.sample("delta", l + 1)
                formula = (lambda l: lambda i, j: (
                    f"{self._sample_cell('slope', l, j, rows(i))}*SUMPRODUCT("
                    f"{self._parameter_range('theta', l + 1, 1 + j, step)},{self._sample_range('delta', l + 1, rows(i))})"))(l)
                back = _abs_product(delta_above, W_above.T)
                scale = max(_max(back * np.abs(np.where(np.isfinite(slope), slope, 0.0))), _max(back, slope, W_above, delta_above))
            yield Block("delta", row0, self.sample_columns[("delta", l)], delta, formula, scale, f"δ{l}")

    def _parameter_range(self, block, l, row, step):
        """One row of a parameter block: the row range over its units."""
        first = self.parameter_columns[(block, l)]
        number = self.parameter_row(step) + row
        return f"{_letter(first)}{number}:{_letter(first + self.widths[l] - 1)}{number}"

    def _total_blocks(self, step, n, v):
        s, row = self.scenario, self.total_row(step)
        loss_column = self.sample_columns[("loss", None)]
        span = f"{_letter(loss_column)}{self.first_sample_row(step)}:{_letter(loss_column)}{row - 1}"
        yield Block("loss_total", row, loss_column, v.total("loss"),
                    lambda i, j: procedures.excel_reduce(span, s.reduction, n), _max(v.sample("loss", None)), "E (batch)")
        if "lr" in self.summary:
            yield Block("lr", row, self.sample_columns[("lr", None)], v.total("lr"),
                        lambda i, j: procedures.excel_learning_rate(s.optimizer_params["schedule"], f"$A{row}"),
                        _max(v.total("lr")), "lr")
        if s.clip_norm is not None:
            ranges = []
            for l in range(1, self.L + 1):
                first = self.parameter_columns[("grad", l)]
                top = self.parameter_row(step) + (0 if s.layers[l - 1].train_bias else 1)
                bottom = self.parameter_row(step) + self.widths[l - 1]
                ranges.append(f"{_letter(first)}{top}:{_letter(first + self.widths[l] - 1)}{bottom}")
            norm_cell = self._summary_cell("grad_norm", step)
            grads = [v.parameter(which, l, "grad") for l in range(1, self.L + 1) for which in ("W", "b")]
            yield Block("grad_norm", row, self.sample_columns[("grad_norm", None)], v.total("grad_norm"),
                        lambda i, j: procedures.excel_grad_norm(ranges), _max(*grads), "‖g‖")
            yield Block("clip_factor", row, self.sample_columns[("clip_factor", None)], v.total("clip_factor"),
                        lambda i, j: procedures.excel_clip_factor(norm_cell), _max(v.total("grad_norm"), 1.0), "clip c")

    def _parameter_blocks(self, step, n, v, first):
        s, row0 = self.scenario, self.parameter_row(step)
        for l in range(1, self.L + 1):
            layer = s.layers[l - 1]
            trained_b = layer.train_bias
            theta = v.stacked("theta", l)
            if first:
                formula = None
                scale = _max(theta)
            else:
                formula = self._carried(l, step - 1, trained_b)
                scale = _max(v.stacked("theta", l, previous=True), v.stacked("update", l, previous=True))
            yield Block("theta", row0, self.parameter_columns[("theta", l)], theta, formula, scale, f"θ (W{l}, b{l})")
            below = v.sample(*self._below(l)) if l > 1 else v.data()[0]
            delta = v.sample("delta", l)
            mean = s.reduction == "mean"
            grad = v.stacked("grad", l)
            terms = np.vstack([_abs_product(np.ones((1, delta.shape[0])), delta), _abs_product(below.T, delta)])
            if mean:
                terms = terms / max(n, 1)

            first_row, last_row = self.first_sample_row(step), self.first_sample_row(step) + n - 1
            below_letters = LETTERS[self.sample_columns[self._below(l)]:]
            delta_letters = LETTERS[self.sample_columns[("delta", l)]:]
            divide = f"/{n}" if mean else ""

            def grad_formula(i, j, below_letters=below_letters, delta_letters=delta_letters):
                d = delta_letters[j]
                if i == 0:
                    return procedures.excel_reduce(f"{d}{first_row}:{d}{last_row}", s.reduction, n)
                a = below_letters[i - 1]
                return f"SUMPRODUCT({a}{first_row}:{a}{last_row},{d}{first_row}:{d}{last_row}){divide}"
            yield Block("grad", row0, self.parameter_columns[("grad", l)], grad, grad_formula,
                        max(_max(terms), _max(below, delta)), f"∂E/∂θ{l} (batch)")
            update = v.stacked("update", l)
            states = [v.stacked(state, l) for state in self.optimizer.state]
            previous_states = [v.stacked(state, l, previous=True) for state in self.optimizer.state]
            scale = max(_max(grad, theta, update, *states, *previous_states, v.total("lr") if "lr" in self.summary else 0),
                        _max(v.total("clip_factor")) if s.clip_norm is not None else 0.0)
            yield Block("update", row0, self.parameter_columns[("update", l)], update,
                        self._optimizer_formula(step, l, trained_b, None, first), scale, f"Δθ{l}", not trained_b)
            for state, values in zip(self.optimizer.state, states):
                yield Block(state, row0, self.parameter_columns[(state, l)], values,
                            self._optimizer_formula(step, l, trained_b, state, first, v), scale, f"{state} {l}",
                            not trained_b)

    def _carried(self, l, previous, trained_b):
        """θ at the next step: θ − Δθ of step `previous` (a frozen bias: θ)."""
        top = self.parameter_row(previous)
        theta = LETTERS[self.parameter_columns[("theta", l)]:]
        update = LETTERS[self.parameter_columns[("update", l)]:]

        def formula(i, j):
            if i == 0 and not trained_b:
                return f"{theta[j]}{top}"
            return f"{theta[j]}{top + i}-{update[j]}{top + i}"
        return formula

    def _optimizer_formula(self, step, l, trained_b, state, first, v=None):
        """The formula of Δθ (state None) or of one optimiser state, per cell of the block: the
        optimiser's Excel form written once with placeholders for the cells, filled per cell."""
        s, hyper = self.scenario, self.scenario.optimizer_params
        names = {p: self.names[("optimizer", p)] for p in hyper if ("optimizer", p) in self.names}
        lr = self._summary_cell("lr", step) if "lr" in self.summary else names["lr"]
        factor = self._summary_cell("clip_factor", step) if s.clip_norm is not None else None
        clip_value = "clip_value" if s.clip_value is not None else None
        t = f"($A${self.total_row(step)}+1)"
        gradient = procedures.excel_clipped("{grad}", factor, clip_value)
        gradient = optim.excel_gradient(gradient, "{theta}", names, hyper)
        refs = dict(names, lr=lr, t=t, nesterov=hyper.get("nesterov", False), g=gradient,
                    **{name: "{" + name + "}" for name in self.optimizer.state})
        if state is None:
            template = self.optimizer.excel_update(refs)
        else:
            template = self.optimizer.excel_state[state](dict(refs, **{f"prev_{state}": "{previous}"}))
        blocks = ["grad", "theta"] + list(self.optimizer.state)
        letters = {name: LETTERS[self.parameter_columns[(name, l)]:self.parameter_columns[(name, l)] + self.widths[l]]
                   for name in blocks}
        top = self.parameter_row(step)
        before_top = self.parameter_row(max(step - 1, 0))
        before = v.initial(state, l) if first and state is not None else None

        def formula(i, j):
            if i == 0 and not trained_b:
                return None
            row = top + i
            cells = {name: f"{letters[name][j]}{row}" for name in blocks}
            if state is not None:
                if first:
                    value = float(before[i, j])
                    if not np.isfinite(value):
                        return "#NUM!"   # the state before a window's first step is not finite
                    cells["previous"] = repr(value) if value else "0"
                else:
                    cells["previous"] = f"{letters[state][j]}{before_top + i}"
            return template.format_map(cells)
        return formula

    def _activation_params(self, l):
        layer = self.scenario.layers[l - 1]
        return {name: self.names[(layer.activation, name, l)] for name in activations.get(layer.activation).params}

    def final_block(self, trace):
        """The parameters after the last step: θ = previous θ − previous Δθ."""
        step = len(self.counts)
        v = _Values(trace, step, 0, self)
        row0 = self.parameter_row(step)
        for l in range(1, self.L + 1):
            formula = self._carried(l, step - 1, self.scenario.layers[l - 1].train_bias)
            scale = _max(v.stacked("theta", l, previous=True), v.stacked("update", l, previous=True))
            yield Block("theta", row0, self.parameter_columns[("theta", l)], v.stacked("theta", l), formula, scale,
                        f"θ (W{l}, b{l}) after the last step", layer=l)

    # ---------------------------------------------------------------- headers

    def sample_headers(self):
        """(group row, header row) of the sample rows: {column index: text}."""
        groups, heads = {0: "step", 1: "sample"}, {}
        titles = {"x": "input x", "t": "target t", "u": "u = MMULT(a⁽ˡ⁻¹⁾, W) + b", "a": "a = f(u)",
                  "dE_da": "∂E/∂a", "loss": "E", "slope": "f'(u)", "delta": "δ = ∂E/∂u",
                  "lr": "lr", "grad_norm": "‖g‖", "clip_factor": "clip c"}
        for (quantity, l), column in self.sample_columns.items():
            groups[column] = titles[quantity] + (f" (layer {l})" if l else "")
            width = 1 if l is None else self.widths[l]
            for j in range(width):
                heads[column + j] = _symbol(quantity, l, j)
        heads[0], heads[1] = "t", "sample"
        return groups, heads

    def parameter_headers(self, final=False):
        """(group row, header row) of the parameter rows."""
        groups, heads = {1: "row"}, {}
        titles = {"theta": "θ used at this step" if not final else "θ after the last step",
                  "grad": "∂E/∂θ of the batch (SUMPRODUCT of a⁽ˡ⁻¹⁾ and δ)", "update": f"Δθ ({self.scenario.optimizer})"}
        for (block, l), column in self.parameter_columns.items():
            if final and block != "theta":
                continue
            groups[column] = f"{titles.get(block, optim.STATE_SYMBOLS.get(block, block) + ' (' + block + ')')} · layer {l}"
            for j in range(self.widths[l]):
                heads[column + j] = f"[·,{j}]"
        return groups, heads


def _symbol(quantity, l, j):
    """The header of unit j of a sample-row quantity: x₀, u¹₀, δ²₁, E, ..."""
    if quantity in ("x", "t"):
        return notation.sub(quantity, j)
    if l is None:
        return {"loss": "E", "grad_norm": "‖g‖", "clip_factor": "clip c"}.get(quantity, quantity)
    symbol = {"slope": "f'", "delta": "δ", "dE_da": "∂E/∂a"}.get(quantity, quantity)
    return notation.unit(symbol, l, j)


def _weighted_sum(layout, step, l, rows):
    """u⁽ˡ⁾ of a sample row: MMULT of the row of a⁽ˡ⁻¹⁾ and W's column j, plus b_j."""
    below = layout._below(l)
    fan_in = layout.widths[l - 1]

    def formula(i, j):
        a_row = layout._sample_range(*below, rows(i), width=fan_in)
        top = layout._parameter_cell("theta", l, 1, j, step)
        bottom = layout._parameter_cell("theta", l, fan_in, j, step)
        return f"MMULT({a_row},{top}:{bottom})+{layout._parameter_cell('theta', l, 0, j, step)}"
    return formula


class _Values:
    """The engine's values of one step, shaped as the blocks (zeros without a trace)."""

    def __init__(self, trace, step, n, layout):
        self.trace, self.step, self.n, self.layout = trace, step, n, layout
        self.ids = ([int(i) for i in layout.sample_ids[step] if i >= 0] if step < len(layout.sample_ids) else [])

    def data(self):
        s = self.layout.scenario
        if not self.ids:
            return np.zeros((0, s.widths[0])), np.zeros((0, s.widths[-1]))
        return s.inputs[self.ids], s.targets[self.ids]

    def sample(self, quantity, l):
        t, n, widths = self.trace, self.n, self.layout.widths
        if quantity == "x":
            return self.data()[0]
        width = 1 if l is None else widths[l]
        if t is None:
            return np.zeros((n, width))
        if quantity == "loss":
            return t.sample_loss[self.step, :n, None]
        if quantity == "dE_da":
            return t.output_error[self.step, :n]
        return getattr(t, quantity)[l - 1][self.step, :n]

    def total(self, quantity):
        if self.trace is None:
            return np.zeros((1, 1))
        return np.array([[getattr(self.trace, quantity)[self.step]]], dtype=float)

    def parameter(self, which, l, block="theta", previous=False):
        """W or b of layer l (block theta: the value used at the step; grad, update; a state)."""
        widths = self.layout.widths
        shape = (widths[l - 1], widths[l]) if which == "W" else (widths[l],)
        step = self.step - 1 if previous else self.step
        if self.trace is None or step < 0:
            return np.zeros(shape)
        t = self.trace
        if block == "theta":
            return getattr(t, which)[l - 1][step]
        if block in ("grad", "update"):
            return getattr(t, f"{block}_{which}")[l - 1][step]
        return t.state[(block, which)][l - 1][step]

    def stacked(self, block, l, previous=False):
        """A parameter block: the bias in row 0, W below it ((1 + fan-in) × units)."""
        return np.vstack([self.parameter("b", l, block, previous)[None, :], self.parameter("W", l, block, previous)])

    def initial(self, state, l):
        """The optimiser state before the first step of the trace, stacked like the blocks."""
        if self.trace is None:
            return np.zeros((self.layout.widths[l - 1] + 1, self.layout.widths[l]))
        before = self.trace.initial_state
        return np.vstack([before[(state, "b")][l - 1][None, :], before[(state, "W")][l - 1]])


# -------------------------------------------------------------------- writing and verifying

def write_sheet(workbook, trace, layout, progress=None):
    """The Trace sheet of the matrix layout: its frame (widths, frozen label columns, highlights);
    returns the generator of its rows (XML, one step at a time: memory does not grow with steps)."""
    from . import writer
    from openpyxl.cell import WriteOnlyCell
    from . import xlsx
    sheet = workbook.create_sheet("Trace")
    sheet.column_dimensions["A"].width = 9
    sheet.column_dimensions["B"].width = 9
    for index in range(2, layout.column_count):
        sheet.column_dimensions[_letter(index)].width = 12
    sheet.freeze_panes = "C1"
    whole = f"C1:{_letter(max(layout.column_count - 1, 2))}{layout.last_row}"
    sheet.conditional_formatting.add(whole, writer._rule("ISERROR(C1)", fill=writer._ERROR_FILL, stop=True))
    writer._add_number_rules(sheet, whole, "C1")
    header = WriteOnlyCell(sheet)
    header.font, header.fill = writer._HEADER_FONT, writer._HEADER_FILL
    group = WriteOnlyCell(sheet)
    group.font, group.fill = writer._HEADER_FONT, writer._GROUP_FILL
    total = WriteOnlyCell(sheet)
    total.font, total.fill = writer._HEADER_FONT, writer._TOTAL_FILL
    styles = {"header": xlsx.style(header.style_id), "group": xlsx.style(group.style_id), "total": xlsx.style(total.style_id)}
    return _sheet_rows(trace, layout, styles, progress)


def _sheet_rows(trace, layout, styles, progress):
    from . import xlsx
    first_step = trace.first_step
    for step in range(len(layout.counts)):
        yield from _rows_of(layout, _step_cells(trace, layout, step, styles))
        if progress:
            progress(step + 1)
    final = len(layout.counts)
    cells = {}
    _header_rows(cells, layout.parameter_row(final) - PARAMETER_HEADER_ROWS, layout.parameter_headers(final=True), styles,
                 f"after step {first_step + final - 1}")
    _parameter_labels(cells, layout, final)
    for block in layout.final_block(trace):
        _block_cells(cells, block)
    yield from _rows_of(layout, cells)


def _rows_of(layout, cells):
    from . import xlsx
    for number in sorted(cells):
        yield xlsx.row(number, [xml for _, xml in sorted(cells[number], key=lambda c: c[0])])


def _header_rows(cells, row, headers, styles, title):
    from . import xlsx
    groups, heads = headers
    groups = {**groups, 0: title}
    cells.setdefault(row, []).extend((c, xlsx.value_cell(f"{_letter(c)}{row}", text, styles["group"])) for c, text in groups.items())
    cells.setdefault(row + 1, []).extend((c, xlsx.value_cell(f"{_letter(c)}{row + 1}", text, styles["header"]))
                                         for c, text in heads.items())


def _parameter_labels(cells, layout, step):
    from . import xlsx
    top = layout.parameter_row(step)
    for i in range(layout.parameter_rows):
        cells.setdefault(top + i, []).append((1, xlsx.value_cell(f"B{top + i}", "b" if i == 0 else f"W[{i - 1},·]")))


def _step_cells(trace, layout, step, styles):
    """{row: [(column, xml)]} of one step."""
    from . import xlsx
    number = trace.first_step + step
    cells = {}
    start = layout.starts[step]
    _header_rows(cells, start, layout.sample_headers(), styles, f"step {number}")
    first = layout.first_sample_row(step)
    ids = [int(i) for i in layout.sample_ids[step] if i >= 0]
    for slot, sample in enumerate(ids):
        cells.setdefault(first + slot, []).extend([(0, xlsx.value_cell(f"A{first + slot}", number)),
                                                   (1, xlsx.value_cell(f"B{first + slot}", sample))])
    total = layout.total_row(step)
    cells.setdefault(total, []).extend([(0, xlsx.value_cell(f"A{total}", number, styles["total"])),
                                        (1, xlsx.value_cell(f"B{total}", "Σ", styles["total"]))])
    _header_rows(cells, total + 1, layout.parameter_headers(), styles, f"step {number}")
    _parameter_labels(cells, layout, step)
    for block in layout.step_blocks(step, trace):
        _block_cells(cells, block)
    return cells


def _block_cells(cells, block):
    """Add a block's cells: formulas with the engine's value cached, or the engine's constants."""
    from . import writer, xlsx
    values = block.values.tolist()
    for i in range(block.height):
        if i == 0 and block.blank_first_row:
            continue
        number = block.row + i
        line = cells.setdefault(number, [])
        for j in range(block.width):
            column = block.column + j
            ref = f"{_letter(column)}{number}"
            value = values[i][j]
            if block.formula is None:
                line.append((column, writer.constant_cell(ref, value)))
                continue
            text = block.formula(i, j)
            if text is None:
                continue
            if text == "#NUM!":   # the optimiser state before a window's first step is not finite
                line.append((column, xlsx.value_cell(ref, "#NUM!")))
            else:
                line.append((column, xlsx.formula_cell(ref, text, value)))


def compare(report, trace, layout, sheet, judge, floor_factor, mismatch):
    """Every formula cell of the matrix layout's Trace sheet against the engine: per block, the
    cancellation floor is `floor_factor` (verify's FLOOR) × the larger of the block's largest finite
    |value| and its scale (what flows into it: operands and Σ|terms| of its sums); `judge` is
    verify's vectorised rule and `mismatch` its Mismatch (passed in: the workbook does not import
    the commands' level)."""
    blocks = [block for step in range(len(layout.counts)) for block in layout.step_blocks(step, trace)]
    blocks += list(layout.final_block(trace))
    sheet.cover(layout.last_row, layout.column_count)
    rows, columns, engine, floors = [], [], [], []
    for block in blocks:
        if block.formula is None:
            continue   # constants (the first step's parameters)
        top = 1 if block.blank_first_row else 0
        grid_rows, grid_columns = np.meshgrid(np.arange(top, block.height), np.arange(block.width), indexing="ij")
        values = np.asarray(block.values, dtype=float)[top:]
        rows.append((block.row + grid_rows).ravel())
        columns.append((block.column + grid_columns).ravel())
        engine.append(values.ravel())
        floor = floor_factor * max(_max(values), block.scale)
        floors.append(np.full(values.size, max(floor, 1e-300)))
    row, column = np.concatenate(rows), np.concatenate(columns)
    x, floor = np.concatenate(engine), np.concatenate(floors)
    y, kind = sheet.numbers[row - 1, column], sheet.kinds[row - 1, column]
    live = [b for b in blocks if b.formula is not None]
    names = np.concatenate([np.full(b.values[(1 if b.blank_first_row else 0):].size, k) for k, b in enumerate(live)])

    def describe(k):
        return f"Trace!{_letter(int(column[k]))}{int(row[k])}", live[int(names[k])].header
    for k in judge(report, "Trace", x, y, kind, floor, describe):
        where, header = describe(k)
        report.mismatches.append(mismatch(where, header, float(x[k]), sheet.value(int(row[k]), int(column[k]))))


class StepsLayout(steps_module.StepsLayout):
    """The Steps sheet on the matrix layout's Trace sheet: per step E of the batch (the Σ row), the
    norm of each layer's batch gradient block (θ's ∂E/∂W and ∂E/∂b: SUMSQ of the block) and
    log10|W[0,0]| of each layer (row 1 of its θ block)."""

    def __init__(self, trace, trace_layout):
        self.trace, self.layout = trace, trace_layout
        self.first_step = trace.first_step
        self.layers = trace.layers

    def rows(self):
        layout, widths = self.layout, self.layout.widths
        loss = LETTERS[layout.sample_columns[("loss", None)]]
        for step in range(self.trace.steps):
            top = layout.parameter_row(step)
            row = [f"Trace!{loss}{layout.total_row(step)}"]
            for l in range(1, self.layers + 1):
                first = layout.parameter_columns[("grad", l)]
                span = f"Trace!{LETTERS[first]}{top}:{LETTERS[first + widths[l] - 1]}{top + widths[l - 1]}"
                row.append(f"SQRT(SUMSQ({span}))")
            row += [f"LOG10(ABS(Trace!{LETTERS[layout.parameter_columns[('theta', l)]]}{top + 1}))"
                    for l in range(1, self.layers + 1)]
            yield [self.first_step + step] + [f"=IFERROR({body},NA())" for body in row]
